"""Cloud storage: a container's Google Drive / Dropbox mounted with rclone over FUSE."""

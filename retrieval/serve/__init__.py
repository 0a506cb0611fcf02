"""The local web server and page."""

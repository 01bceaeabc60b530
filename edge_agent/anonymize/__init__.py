"""Anonymize stored images and videos with key-driven virtual faces, and search them by key.

``kfaar anonymize`` replaces every face of an image, a folder or a video by its virtual
face under a key and writes a JSON sidecar per output; ``kfaar search-footage`` lets the
key holder find a person in those outputs with KVFA, without writing any original face.
"""

IMAGE_OUTPUT_QUALITY = 95  # JPEG/WebP quality of written images
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v"})

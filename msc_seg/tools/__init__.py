"""Command-line tools (`python -m msc_seg.tools.<name>`), e.g. import_weights."""

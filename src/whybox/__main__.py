"""``python -m whybox`` is the ``whybox`` command."""

from whybox.cli import main

main()

"""``python -m labeller``: the same CLI as the ``labeller`` command."""

from labeller.cli import main

if __name__ == "__main__":
    main()

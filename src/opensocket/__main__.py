"""``python -m opensocket``: the same as the ``opensocket`` command."""

from .cli import run

if __name__ == "__main__":
    run()

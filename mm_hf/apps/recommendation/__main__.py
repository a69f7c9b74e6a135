from ...errors import run_cli
from .demo import main

if __name__ == "__main__":
    run_cli(main)

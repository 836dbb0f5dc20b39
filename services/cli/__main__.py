"""`python -m services.cli`: the `timebank` command (the local runner starts services so)."""

from services.cli import main

main()

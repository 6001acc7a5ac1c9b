"""`python -m elasticml.cli`: the `elasticml` command."""

from elasticml.cli import main

main()

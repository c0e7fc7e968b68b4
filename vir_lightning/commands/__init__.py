"""The commands of ``python -m vir_lightning <command>``: one module per command, each with its
argument parser and ``main(argv) -> int``; the library they call lives in the other packages.

``lightning`` holds the LightningCLI of ``fit`` / ``validate`` / ``test`` / ``predict``; the tools
are registered in :data:`vir_lightning.cli.TOOLS` (and, from other distributions, through the
``vir_lightning.commands`` entry-point group). Nothing below this package imports it.
"""

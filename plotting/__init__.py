"""Plotting and publishing: a paper artifact's sweep -> results/<name>/ (tables, figures, the comparison with
the paper), and the generated blocks of README.md and docs/ (the reproduction and systems tables)."""

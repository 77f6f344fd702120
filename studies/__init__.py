"""The study files shipped with mergesearch (TOML; see studies/README.md).

A package only so that they travel with every install: ``importlib.resources.files("studies")`` finds
``toy.toml`` (what ``mergesearch demo`` runs) in a source checkout and in an installed wheel alike.
"""

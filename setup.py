"""Which files the wheel holds; everything else is in pyproject.toml.

One mapping needs code: the shipped boot profiles live once, in the repo's
top-level ``profiles/`` (DESIGN.md "Layout": the directory operators read),
and the wheel carries them as the package data ``bootsvc/shipped_profiles/``
(:data:`bootsvc.profiles.SHIPPED` finds either). pyproject.toml's
``package-dir`` cannot add such a mapped package next to a package search,
and a symlink or a second copy would drift.
"""

from setuptools import find_packages, setup

SHIPPED_PROFILES = "bootsvc.shipped_profiles"

setup(
    packages=[*find_packages(include=["bootsvc", "bootsvc.*", "isns", "isns.*", "target", "target.*"]),
              SHIPPED_PROFILES],
    package_dir={SHIPPED_PROFILES: "profiles"},
    package_data={
        SHIPPED_PROFILES: ["*.yaml"],
        "bootsvc.demo": ["*.sh"],
        "bootsvc.web": ["*.html", "*.js", "*.css"],
    },
)

# Copyright (c) rekd_mm contributors. All rights reserved.
# Metadata and dependencies live in setup.cfg.
from setuptools import setup

setup()

# Copyright (c) rekd_mm contributors. All rights reserved.
"""Import a script of the repository (``tools/``, ``benchmarks/``) as a
module, for tests that call its functions directly."""
import importlib.util
import os.path as osp
from types import ModuleType

from tests.toy_configs import REPO_ROOT

__all__ = ['load_script']


def load_script(path: str) -> ModuleType:
    """Execute a script file as a fresh module (not added to
    ``sys.modules``: two tests may load the same script independently).

    Args:
        path (str): The script, absolute or relative to the repository root.

    Returns:
        ModuleType: The executed module.
    """
    path = osp.join(REPO_ROOT, path)
    name = 'script_' + osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

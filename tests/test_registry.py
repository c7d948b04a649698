# Copyright (c) rekd_mm contributors. All rights reserved.
"""Importing rekd_mm registers its modules in mmpretrain's own registries."""
import subprocess
import sys


def test__import_registers_modules_in_mmpretrain_registries():
    # A fresh interpreter: other tests have imported rekd_mm already.
    code = (
        'from mmpretrain.registry import HOOKS, MODELS, TRANSFORMS\n'
        "assert MODELS.get('ReKD') is None\n"
        'import rekd_mm\n'
        "names = {'MODELS': ['ReKD', 'RelationContrastiveHead'],\n"
        "         'HOOKS': ['RelationMinerHook', 'KNNMonitorHook',\n"
        "                   'LossGuardHook', 'AtomicCheckpointHook',\n"
        "                   'StrictPretrainedCheckHook',\n"
        "                   'ExportWeightsHook'],\n"
        "         'TRANSFORMS': ['GrayToRGB', 'SafeLoadImageFromFile']}\n"
        'for reg, mods in names.items():\n'
        '    for name in mods:\n'
        '        cls = eval(reg).get(name)\n'
        "        assert cls is not None, f'{name} not in {reg}'\n"
        "        assert cls.__module__.startswith('rekd_mm.'), cls\n"
        # `pkg::` bases' `_scope_` is accepted by the collate functions.
        'from mmengine.registry import FUNCTIONS\n'
        "for name in ('default_collate', 'pseudo_collate'):\n"
        '    module = FUNCTIONS.get(name).__module__\n'
        "    assert module == 'rekd_mm.datasets.collate', module\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, '-c', code],
                         capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith('ok')

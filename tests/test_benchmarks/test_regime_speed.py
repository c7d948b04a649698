# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/regime_speed.py runs and writes its table (nothing timed)."""
import json
import os.path as osp

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'regime_speed.py')


def test__writes_one_record_per_backbone_and_mode(tmp_path):
    module = load_script(SCRIPT)
    out = tmp_path / 'speed.json'
    module.main([
        '--batch', '2', '--repeats', '1', '--backbones',
        'mobilenet-v2, stride-1 stem', '--modes', 'fp32', 'channels_last',
        '--out',
        str(out)
    ])
    records = json.loads(out.read_text())['records']
    assert [(r['backbone'], r['mode']) for r in records
            ] == [('mobilenet-v2, stride-1 stem', 'fp32'),
                  ('mobilenet-v2, stride-1 stem', 'channels_last')]
    assert all(r['median_s'] > 0 for r in records)
    # The warm-up (in the compiled modes: compiling) step is kept apart
    # from the timed repeats.
    assert all(r['first_step_s'] > 0 and len(r['times_s']) == 1
               for r in records)
    md = out.with_suffix('.md').read_text()
    assert '| mobilenet-v2, stride-1 stem | channels_last |' in md
    # The speed-up is relative to the first mode asked for.
    assert 'speed-up vs fp32 | first step (s) |' in md

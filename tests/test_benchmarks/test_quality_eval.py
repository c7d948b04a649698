# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/quality_eval.py builds the scored backbones of the split-BN
(small4k) regime in a fresh process, where no default scope is set yet."""
import os
import os.path as osp
import subprocess
import sys
import textwrap

from tests.toy_configs import REPO_ROOT

CONFIG = ('configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
          '1xb64-4ki_cifar10.py')


def test__split_bn_backbones_build_without_a_default_scope():
    script = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, 'benchmarks')
        from mmengine.config import Config
        from mmengine.registry import DefaultScope
        import quality_eval
        from rekd_mm.models.utils import SplitBatchNorm
        assert DefaultScope.get_current_instance() is None
        cfg = Config.fromfile({CONFIG!r})
        for prefix in ('backbone.', 'teacher.backbone.'):
            backbone = quality_eval.build_backbone(cfg, prefix)
            norms = [m for m in backbone.modules()
                     if type(m).__name__.endswith('BatchNorm')]
            assert norms and all(
                isinstance(m, SplitBatchNorm) and m.num_splits == 4
                for m in norms), prefix
        print('built')
    ''')
    proc = subprocess.run([sys.executable, '-c', script],
                          cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('built')
    assert osp.isfile(osp.join(REPO_ROOT, CONFIG))

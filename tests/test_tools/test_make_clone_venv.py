# Copyright (c) rekd_mm contributors. All rights reserved.
"""tools/make_clone_venv.sh: each clone imports its own rekd_mm.

A stand-in shared venv (no pip, a stub ``mmengine``) holds a stale
``rekd_mm`` of another clone, as the editable installs of sessions up to 7
left there; two stand-in clones are set up over it, and each must import
its own code.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
import venv

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(REPO_ROOT, 'tools', 'make_clone_venv.sh')


def _site_packages(venv_dir):
    return osp.join(venv_dir, 'lib',
                    f'python{sys.version_info[0]}.{sys.version_info[1]}',
                    'site-packages')


def _package(root, name, text):
    os.makedirs(osp.join(root, name))
    with open(osp.join(root, name, '__init__.py'), 'w') as f:
        f.write(f'WHO = {text!r}\n')


def _clone(tmp_path, name):
    root = tmp_path / name
    (root / 'tools').mkdir(parents=True)
    shutil.copy(SCRIPT, root / 'tools')
    _package(str(root), 'rekd_mm', name)
    return root


def _shared_venv(tmp_path, stale_rekd_mm=False):
    """A stand-in shared venv: no pip, a stub ``mmengine`` and, if asked, the
    stale ``rekd_mm`` of another clone."""
    shared = str(tmp_path / 'shared-venv')
    venv.create(shared, with_pip=False)
    _package(_site_packages(shared), 'mmengine', 'shared')
    if stale_rekd_mm:
        _package(_site_packages(shared), 'rekd_mm', 'stale install')
    return shared


def _make(clone, shared):
    return subprocess.run([
        'bash',
        str(clone / 'tools' / 'make_clone_venv.sh'), shared,
        str(clone / '.venv')
    ],
                          capture_output=True,
                          text=True,
                          timeout=120)


def _who(clone):
    # Run outside the clone: from inside it, the working directory alone
    # would make its rekd_mm importable.
    out = subprocess.run([
        str(clone / '.venv' / 'bin' / 'python'), '-c',
        'import mmengine, rekd_mm; print(rekd_mm.WHO, mmengine.WHO)'
    ],
                         cwd=clone.parent,
                         capture_output=True,
                         text=True,
                         timeout=60,
                         check=True)
    return out.stdout.split()


def test_each_clone_imports_its_own_code(tmp_path):
    shared = _shared_venv(tmp_path, stale_rekd_mm=True)
    first, second = _clone(tmp_path, 'first'), _clone(tmp_path, 'second')

    for clone in (first, second):
        proc = _make(clone, shared)
        assert proc.returncode == 0, proc.stderr
    assert _who(first) == ['first', 'shared']
    assert _who(second) == ['second', 'shared']

    # Run again (every setup does): the same, and the venv is not rebuilt.
    marker = first / '.venv' / 'kept'
    marker.write_text('')
    assert _make(first, shared).returncode == 0
    assert marker.exists()
    assert _who(first) == ['first', 'shared']


def test_old_symlink_layout_is_replaced_and_shared_venv_kept(tmp_path):
    shared = _shared_venv(tmp_path)
    clone = _clone(tmp_path, 'clone')
    # Up to session 7, .venv was a symlink to the shared venv.
    os.symlink(shared, clone / '.venv')

    proc = _make(clone, shared)
    assert proc.returncode == 0, proc.stderr
    assert not osp.islink(clone / '.venv')
    assert osp.isfile(osp.join(shared, 'bin', 'python'))
    assert osp.isfile(
        osp.join(_site_packages(shared), 'mmengine', '__init__.py'))
    assert _who(clone) == ['clone', 'shared']


def test_clone_without_rekd_mm_fails_with_the_fix(tmp_path):
    shared = _shared_venv(tmp_path, stale_rekd_mm=True)
    clone = _clone(tmp_path, 'clone')
    shutil.rmtree(clone / 'rekd_mm')

    proc = _make(clone, shared)
    assert proc.returncode != 0
    # It names the file that was found instead: the shared venv's stale one.
    assert 'rekd_mm resolves to' in proc.stderr
    assert 'shared-venv' in proc.stderr
    assert 'run the setup again' in proc.stderr


def test_symlink_in_use_is_not_replaced(tmp_path):
    # A process started through the old symlink keeps its site-packages
    # path and imports lazily from it: replacing the symlink under it broke
    # two training runs at their next checkpoint (session 8).
    shared = _shared_venv(tmp_path)
    clone = _clone(tmp_path, 'clone')
    os.symlink(shared, clone / '.venv')
    sleep = ['-c', 'import time; time.sleep(120)']
    users = [
        subprocess.Popen([str(clone / '.venv' / 'bin' / 'python'), *sleep]),
        # started as `.venv/bin/python` from inside the clone
        subprocess.Popen([osp.join('.venv', 'bin', 'python'), *sleep],
                         cwd=clone)
    ]
    try:
        for user in users:
            proc = _make(clone, shared)
            assert proc.returncode == 1
            assert f'{user.pid}' in proc.stderr
            assert 'Run the setup again when they have ended' in proc.stderr
            assert osp.islink(clone / '.venv')
            user.kill()
            user.wait()
    finally:
        for user in users:
            user.kill()
    proc = _make(clone, shared)
    assert proc.returncode == 0, proc.stderr
    assert not osp.islink(clone / '.venv')


def test_stale_install_is_removed_from_the_shared_venv(tmp_path):
    # What `pip install -e` left up to session 7, as pip records it: the
    # package and its dist-info with a RECORD, so pip can uninstall it.
    shared = str(tmp_path / 'shared-venv')
    venv.create(shared, with_pip=True)
    site = _site_packages(shared)
    _package(site, 'mmengine', 'shared')
    _package(site, 'rekd_mm', 'stale install')
    dist_info = osp.join(site, 'rekd_mm-0.1.0.dist-info')
    os.makedirs(dist_info)
    with open(osp.join(dist_info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: rekd_mm\nVersion: 0.1.0\n')
    with open(osp.join(dist_info, 'RECORD'), 'w') as f:
        f.write('rekd_mm/__init__.py,,\nrekd_mm-0.1.0.dist-info/METADATA,,\n'
                'rekd_mm-0.1.0.dist-info/RECORD,,\n')
    clone = _clone(tmp_path, 'clone')

    proc = _make(clone, shared)
    assert proc.returncode == 0, proc.stderr
    assert not osp.exists(osp.join(site, 'rekd_mm'))
    assert not osp.exists(dist_info)
    assert osp.isfile(osp.join(site, 'mmengine', '__init__.py'))
    assert _who(clone) == ['clone', 'shared']

# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmengine 0.10.7's CheckpointHook._save_checkpoint_with_step
# (mmengine/hooks/checkpoint_hook.py, Apache-2.0);
# modified by rekd_mm contributors.
import os
import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS

__all__ = ['AtomicCheckpointHook', 'atomic_write']

# Suffix of the temporary files; only this hook creates (and removes) them.
TMP_SUFFIX = '.atomic-tmp'


def _fsync_dir(path: str) -> None:
    """Flush a directory entry (the rename) to disk, where the OS allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp_path: str, path: str) -> None:
    """fsync ``tmp_path`` and atomically rename it to ``path``."""
    with open(tmp_path, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, path)
    _fsync_dir(osp.dirname(osp.abspath(path)))


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or
    the complete new one, never a part of it: write a temporary file in the
    same directory, fsync it, ``os.replace`` it over ``path``.

    Args:
        path (str): The destination.
        data (bytes): The content.
    """
    tmp_path = osp.join(
        osp.dirname(osp.abspath(path)), f'.{osp.basename(path)}{TMP_SUFFIX}')
    try:
        with open(tmp_path, 'wb') as f:
            f.write(data)
        _publish(tmp_path, path)
    finally:
        if osp.exists(tmp_path):
            os.remove(tmp_path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` with crash-safe
    saving.

    mmengine 0.10.7 serialises a checkpoint to memory, then writes it in
    place (``LocalBackend.put``), then rewrites ``last_checkpoint`` in place,
    and deletes the oldest checkpoint beyond ``max_keep_ckpts`` *before*
    saving the new one. A crash, ``kill -9`` or full disk during a save can
    therefore leave a truncated ``iter_N.pth`` that ``last_checkpoint``
    points to, or (with ``max_keep_ckpts=1``) no loadable checkpoint at all.
    This hook:

    1. writes the checkpoint to a hidden temporary file in the same
       directory, fsyncs it and renames it over the final name
       (``os.replace``, atomic on POSIX file systems);
    2. only then rewrites ``last_checkpoint``, the same way;
    3. only then deletes the checkpoints beyond ``max_keep_ckpts``.

    So at every instant ``last_checkpoint`` names a complete file and
    ``--resume auto`` works after any crash. A save that fails leaves the
    previous checkpoints and ``last_checkpoint`` untouched.

    All arguments are those of ``CheckpointHook``; use it in a config with
    ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook',
    ...))``. On a non-local storage backend (``backend_args``, ``s3://``
    ...) there is no atomic rename and the hook behaves like
    ``CheckpointHook``. Best-metric checkpoints (``save_best``) are saved by
    ``CheckpointHook`` unchanged.
    """

    def before_train(self, runner: Runner) -> None:
        """Resolve the output directory and remove the temporary files a
        crashed save may have left."""
        super().before_train(runner)
        if not (self._is_local() and is_main_process()
                and osp.isdir(self.out_dir)):
            return
        for name in os.listdir(self.out_dir):
            if name.startswith('.') and name.endswith(TMP_SUFFIX):
                os.remove(osp.join(self.out_dir, name))
                runner.logger.warning(
                    f'AtomicCheckpointHook: removed {name}, the remains of '
                    'a save that was interrupted')

    def _is_local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner: Runner, step: int,
                                   meta: dict) -> None:
        """Save the checkpoint of ``step`` atomically, then point
        ``last_checkpoint`` at it, then delete outdated checkpoints."""
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)

        hub = runner.message_hub
        old_info = {
            key: hub.get_info(key)
            for key in ('keep_ckpt_ids', 'last_ckpt')
            if key in hub.runtime_info
        }
        old_keep = list(getattr(self, 'keep_ckpt_ids', []))
        old_last = self.last_ckpt

        # The message hub is saved inside the checkpoint, so it must already
        # list the new checkpoint; the outdated file itself is only deleted
        # once the new one is on disk.
        outdated: Optional[int] = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        hub.update_info('last_ckpt', self.last_ckpt)

        tmp_filename = f'.{ckpt_filename}{TMP_SUFFIX}'
        tmp_path = osp.join(self.out_dir, tmp_filename)
        try:
            runner.save_checkpoint(
                self.out_dir,
                tmp_filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
            if is_main_process():
                _publish(tmp_path, self.last_ckpt)
        except BaseException:
            # Leave everything as it was before this save.
            if is_main_process() and osp.exists(tmp_path):
                os.remove(tmp_path)
            if self.max_keep_ckpts > 0:
                self.keep_ckpt_ids.clear()
                self.keep_ckpt_ids.extend(old_keep)
            self.last_ckpt = old_last
            for key, value in old_info.items():
                hub.update_info(key, value)
            raise

        if not is_main_process():
            return
        atomic_write(
            osp.join(runner.work_dir, 'last_checkpoint'),
            self.last_ckpt.encode())
        if outdated is not None:
            path = osp.join(self.out_dir, self.filename_tmpl.format(outdated))
            if osp.isfile(path):
                os.remove(path)

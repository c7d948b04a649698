# Copyright (c) rekd_mm contributors. All rights reserved.
import copy
import glob
import json
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401
from rekd_mm.evaluation import (build_knn_dataloader, extract_features,
                                weighted_knn)
from tests.toy_configs import toy_knn_loader_cfg, toy_runner_cfg

# ReKD trains only under a RelationMinerHook.
_MINER = dict(type='RelationMinerHook', init_iter=1, source='queue')


def _runner(work_dir, **hook) -> Runner:
    hook_cfg = dict(
        type='KNNMonitorHook',
        interval=2,
        by_epoch=False,
        k=5,
        max_train_samples=48,
        max_val_samples=24)
    hook_cfg.update(hook)
    cfg = toy_runner_cfg(
        str(work_dir),
        max_iters=4,
        custom_hooks=[_MINER, hook_cfg],
        knn_train_dataloader=toy_knn_loader_cfg('train'),
        knn_val_dataloader=toy_knn_loader_cfg('test'))
    return Runner.from_cfg(Config(cfg))


def test__hook_logs_student_and_teacher_knn_and_restores_train_mode(tmp_path):
    runner = _runner(tmp_path)
    runner.train()
    hub = runner.message_hub
    model = get_ori_model(runner.model)

    # Evaluated at iterations 2 and 4, for both networks.
    history = hub.get_scalar('knn/student_top1').data[0]
    assert len(history) == 2
    assert len(hub.get_scalar('knn/teacher_top1').data[0]) == 2
    assert 'knn/student_top5' in hub.log_scalars  # Fashion-MNIST: 10 classes
    assert model.training and model.backbone.training
    assert model.teacher.backbone.training

    # The value logged at iteration 4 is the weighted kNN of the final
    # student, on the same subsets (the hook's subsets are seeded).
    train = build_knn_dataloader(toy_knn_loader_cfg('train'), 48, seed=0)
    val = build_knn_dataloader(toy_knn_loader_cfg('test'), 24, seed=0)
    for who, backbone in (('student', model.backbone),
                          ('teacher', model.teacher.backbone)):
        expected = weighted_knn(
            *extract_features(backbone, train, model.data_preprocessor),
            *extract_features(backbone, val, model.data_preprocessor),
            k=5,
            num_classes=10)
        assert hub.get_scalar(f'knn/{who}_top1').current() == \
            pytest.approx(expected['top1'])
    assert model.backbone.training  # the check above restored it too

    # Written to the visualizer backends (scalars.json) at steps 2 and 4.
    scalars = glob.glob(
        osp.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))
    assert len(scalars) == 1
    records = [json.loads(line) for line in open(scalars[0])]
    steps = [r['step'] for r in records if 'knn/student_top1' in r]
    assert steps == [2, 4]


def test__hook_without_knn_dataloaders_fails_before_training(tmp_path):
    cfg = toy_runner_cfg(
        str(tmp_path),
        max_iters=2,
        custom_hooks=[_MINER,
                      dict(type='KNNMonitorHook', by_epoch=False)])
    runner = Runner.from_cfg(Config(cfg))
    with pytest.raises(KeyError, match='knn_train_dataloader'):
        runner.train()
    assert runner.iter == 0


def test__initial_point_scores_the_weights_training_starts_from(tmp_path):
    runner = _runner(tmp_path, initial=True, interval=4, teacher=False)
    model = get_ori_model(runner.model)
    snapshots = []

    # Runs before KNNMonitorHook's before_train (priority VERY_HIGH < LOW),
    # i.e. after the Runner's weight initialisation, before iteration 1.
    class Snapshot(Hook):
        priority = 'VERY_HIGH'

        def before_train(self, runner):
            snapshots.append(copy.deepcopy(model.backbone))

    runner.register_hook(Snapshot())
    runner.train()

    scalars = glob.glob(
        osp.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))
    records = [json.loads(line) for line in open(scalars[0])]
    assert [r['step'] for r in records if 'knn/student_top1' in r] == [0, 4]
    train = build_knn_dataloader(toy_knn_loader_cfg('train'), 48, seed=0)
    val = build_knn_dataloader(toy_knn_loader_cfg('test'), 24, seed=0)
    initial = snapshots[0]
    initial.eval()  # mmpretrain backbones' train() returns None
    expected = weighted_knn(
        *extract_features(initial, train, model.data_preprocessor),
        *extract_features(initial, val, model.data_preprocessor),
        k=5,
        num_classes=10)
    values = runner.message_hub.get_scalar('knn/student_top1').data[0]
    assert values[0] == pytest.approx(expected['top1'])
    assert 'knn/teacher_top1' not in runner.message_hub.log_scalars

# Copyright (c) rekd_mm contributors. All rights reserved.
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmpretrain.models.heads import ContrastiveHead
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import rekd_mm  # noqa: F401  (registers ReKD)
from tests.toy_configs import toy_model_cfg

init_default_scope('mmpretrain')


def _build(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MODELS.build(toy_model_cfg(**kwargs))
    model.init_weights()
    return model


def _batch(num=8, size=16, labels=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(num, 3, size, size, generator=gen) for _ in range(2)]
    samples = [
        DataSample().set_gt_label(i) if labels else DataSample()
        for i in range(num)
    ]
    return views, samples


def _spy_head(model):
    """Record the arguments of every call of the student head."""
    calls = []
    original = model.head.loss

    def spy(query, key, queue, pos_mask=None, mined_scale=1.0):
        calls.append(
            dict(
                query=query.detach(),
                key=key,
                queue=queue,
                pos_mask=pos_mask,
                mined_scale=mined_scale))
        return original(query, key, queue, pos_mask, mined_scale)

    model.head.loss = spy
    return calls


def test__state_dict_layout():
    model = _build()
    keys = set(model.state_dict())
    for prefix in ('backbone.', 'neck.', 'encoder_k.', 'teacher.backbone.',
                   'teacher.neck.', 'teacher_encoder_k.'):
        assert any(k.startswith(prefix) for k in keys), prefix
    for buffer in ('queue', 'teacher_queue', 'queue_ptr', 'queue_labels',
                   'queue_assign', 'miner.prototypes', 'miner.initialized',
                   'miner.last_cluster_iter'):
        assert buffer in keys, buffer
    assert model.queue.shape == model.teacher_queue.shape == (16, 64)


def test__tensor_mode_returns_student_backbone_features():
    model = _build().eval()
    views, _ = _batch(num=2)
    feats = model(views[0], mode='tensor')
    expected = model.backbone(views[0])
    assert len(feats) == len(expected) == 1
    assert feats[0].shape == (2, 1280, 1, 1)
    assert torch.equal(feats[0], expected[0])


def test__before_bank_init_relation_loss_is_infonce():
    model = _build()
    calls = _spy_head(model)
    views, samples = _batch()
    losses = model.loss(views, samples)

    assert set(losses) >= {'loss_teacher', 'loss_relation'}
    call = calls[0]
    assert call['pos_mask'] is None
    reference = ContrastiveHead(
        loss=dict(type='CrossEntropyLoss'), temperature=0.2)
    l_pos = (call['query'] * call['key']).sum(1, keepdim=True)
    expected = reference.loss(l_pos, call['query'] @ call['queue'])
    torch.testing.assert_close(
        losses['loss_relation'].detach(), expected, rtol=0, atol=1e-6)
    for stat in ('proto_assigned_ratio', 'relation_pos_per_anchor',
                 'proto_in_use'):
        assert losses[stat].item() == 0
    # Present in every log entry, NaN ("no value") before the bank exists.
    assert math.isnan(losses['relation_precision'].item())


def test__relation_loss_and_gradients_after_bank_init():
    # Θ = -1 assigns everything, so anchors always share prototypes with
    # filled queue slots.
    model = _build(queue_len=16, num_prototypes=2, threshold=-1.0)
    for seed in range(2):  # fill the queue
        model.loss(*_batch(seed=seed))
    model.miner.initialize(model.filled_mining_keys(), distributed=False)
    model.refresh_queue_assign()
    assert (model.queue_assign >= 0).all()
    calls = _spy_head(model)
    queue_assign = model.queue_assign.clone()  # the step overwrites slots

    losses = model.loss(*_batch(seed=2))

    pos_mask = calls[0]['pos_mask']
    assert pos_mask is not None and pos_mask.shape == (8, 16)
    assert losses['relation_pos_per_anchor'].item() > 0
    assert losses['relation_pos_per_anchor'].item() == pytest.approx(
        pos_mask.sum(1).float().mean().item())
    assert losses['proto_assigned_ratio'].item() == 1.0
    # An anchor's mined positives are exactly the slots of one prototype.
    for row in pos_mask:
        protos = set(queue_assign[row].tolist())
        assert len(protos) == 1
        assert torch.equal(row, queue_assign == protos.pop())
    assert 0 <= losses['relation_precision'].item() <= 1

    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    assert model.backbone.conv1.conv.weight.grad.abs().sum() > 0
    assert model.teacher.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test__queues_advance_together_and_stay_index_aligned():
    model = _build()
    calls = _spy_head(model)
    teacher_before = model.teacher_queue.clone()
    for step in range(2):
        views, samples = _batch(seed=step)
        for i, sample in enumerate(samples):
            sample.set_gt_label(10 * step + i)
        model.loss(views, samples)
        slots = slice(8 * step, 8 * step + 8)
        assert int(model.queue_ptr) == 8 * (step + 1)
        assert int(model.queue_count) == 8 * (step + 1)
        # Student keys were written in batch order ...
        assert torch.equal(model.queue[:, slots], calls[step]['key'].t())
        # ... and the teacher's keys of the same images in the same slots.
        teacher_keys = model.teacher_embed(views[1])
        torch.testing.assert_close(
            model.teacher_queue[:, slots], teacher_keys.t(), rtol=0, atol=1e-5)
        assert model.queue_labels[slots].tolist() == list(
            range(10 * step, 10 * step + 8))
        assert (model.queue_assign[slots] == -1).all()  # bank not ready
    assert torch.equal(model.teacher_queue[:, 16:], teacher_before[:, 16:])
    assert (model.queue_labels[16:] == -1).all()


def test__split_bn_shuffles_the_keys_on_one_process():
    """With SplitBN (MoCo's shuffle-BN on one process) the keys are computed
    on a permuted batch and returned in the images' order; without it there
    is nothing to shuffle."""
    plain = _build()
    assert not plain.split_batch_norm
    assert plain.shuffle_permutation(8) is None
    model = _build(
        backbone=dict(
            type='MobileNetV2',
            widen_factor=0.25,
            norm_cfg=dict(type='SplitBN', num_splits=2)))
    assert model.split_batch_norm
    # A step whose permutation remixes the slices (one that keeps them, 1
    # in 70, leaves every slice's statistics and so the keys unchanged).
    while set(model.shuffle_permutation(8)[:4].tolist()) == set(range(4)):
        model.encoder_k.steps += 1
    perm = model.shuffle_permutation(8)
    assert sorted(perm.tolist()) == list(range(8))
    im_k = _batch()[0][1]
    k_s, _, all_k_s, _ = model._encode_keys(im_k)
    with torch.no_grad():
        shuffled = F.normalize(model.encoder_k(im_k[perm])[0], dim=1)
        in_order = F.normalize(model.encoder_k(im_k)[0], dim=1)
    torch.testing.assert_close(k_s[perm], shuffled, rtol=0, atol=1e-6)
    torch.testing.assert_close(all_k_s, k_s)
    # Keys depend on the slice-mates: the shuffle changed them.
    assert not torch.allclose(k_s, in_order, atol=1e-3)


def test__shuffle_salt_follows_the_seed_and_the_checkpoint():
    """Each seed shuffles its own way (as MoCo's seeded draws do); a loaded
    state dict brings its run's salt; a ReKD state dict from before the salt
    goes on with salt 0, the sequence it was trained with."""
    from rekd_mm.models.utils.batch_shuffle import shuffle_permutation
    split_bn = dict(
        backbone=dict(
            type='MobileNetV2',
            widen_factor=0.25,
            norm_cfg=dict(type='SplitBN', num_splits=2)))
    a, a_again, b = (_build(seed, **split_bn) for seed in (0, 0, 1))
    assert torch.equal(a.shuffle_salt, a_again.shuffle_salt)
    assert not torch.equal(a.shuffle_salt, b.shuffle_salt)
    assert torch.equal(
        a.shuffle_permutation(16), a_again.shuffle_permutation(16))
    assert not torch.equal(
        a.shuffle_permutation(16), b.shuffle_permutation(16))

    b.load_state_dict(a.state_dict())
    assert torch.equal(b.shuffle_salt, a.shuffle_salt)
    assert torch.equal(b.shuffle_permutation(16), a.shuffle_permutation(16))

    legacy = a.state_dict()
    del legacy['shuffle_salt']
    b.load_state_dict(legacy)  # strict: the salt is supplied, not missing
    assert int(b.shuffle_salt) == 0
    assert torch.equal(
        b.shuffle_permutation(16), shuffle_permutation(b.encoder_k.steps, 16))
    # Not a ReKD state (no teacher queue): the model keeps its own salt.
    b.load_state_dict(a.state_dict())
    student_only = {
        k: v
        for k, v in a.state_dict().items() if k.startswith('backbone.')
    }
    b.load_state_dict(student_only, strict=False)
    assert torch.equal(b.shuffle_salt, a.shuffle_salt)


def test__queue_len_must_hold_whole_batches():
    model = _build(queue_len=12)
    with pytest.raises(ValueError, match='model.queue_len=12'):
        model.loss(*_batch())


def test__neck_width_must_equal_feat_dim():
    cfg = toy_model_cfg()
    cfg['neck']['out_channels'] = 8
    with pytest.raises(ValueError, match='model.neck.out_channels=8'):
        MODELS.build(cfg)


def _moco_state_dict():
    """A MoCo-style checkpoint holding a trained teacher-shaped encoder."""
    torch.manual_seed(123)
    donor = MODELS.build(toy_model_cfg())
    state = {
        f'backbone.{k}': v
        for k, v in donor.teacher.backbone.state_dict().items()
    }
    state.update(
        {f'neck.{k}': v
         for k, v in donor.teacher.neck.state_dict().items()})
    state['queue'] = torch.randn(16, 64)
    return state


def test__offline_teacher_loads_and_stays_frozen(tmp_path):
    state = _moco_state_dict()
    path = str(tmp_path / 'moco.pth')
    torch.save(dict(state_dict=state, meta=dict()), path)
    model = _build(teacher_pretrained=dict(checkpoint=path, prefix=''))
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.teacher_encoder_k is None
    assert not any(p.requires_grad for p in model.teacher.parameters())

    model.train()
    assert model.backbone.training
    assert not any(m.training for m in model.teacher.modules())
    frozen = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    losses = model.loss(*_batch())
    assert 'loss_teacher' not in losses
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # BN stats too


def test__teacher_checkpoint_matching_nothing_raises(tmp_path):
    path = str(tmp_path / 'other.pth')
    torch.save({'encoder.layer.weight': torch.zeros(2)}, path)
    with pytest.raises(KeyError) as err:
        _build(teacher_pretrained=dict(checkpoint=path, prefix=''))
    message = str(err.value)
    assert 'encoder.layer.weight' in message and 'backbone.' in message


def test__relation_precision_needs_labels():
    model = _build(queue_len=16, num_prototypes=2, threshold=-1.0)
    for seed in range(2):
        model.loss(*_batch(seed=seed, labels=False))
    model.miner.initialize(model.filled_mining_keys(), distributed=False)
    model.refresh_queue_assign()
    assert (model.queue_labels == -1).all()

    unlabelled = model.loss(*_batch(seed=2, labels=False))
    assert unlabelled['relation_pos_per_anchor'] > 0
    assert math.isnan(unlabelled['relation_precision'].item())

    # Labelled anchors against a still unlabelled queue: nothing to count.
    assert math.isnan(model.loss(*_batch(seed=3))['relation_precision'])
    assert (model.queue_labels[8:] >= 0).all()
    labelled = model.loss(*_batch(seed=4))
    assert 0 <= labelled['relation_precision'].item() <= 1


def test__training_step_leaves_the_global_rng_untouched():
    # The shuffle-BN permutation comes from a step-seeded generator, so the
    # global stream (data augmentation) is the same in a resumed run.
    model = _build()
    views, samples = _batch()
    state = torch.get_rng_state()
    model.loss(views, samples)
    assert torch.equal(torch.get_rng_state(), state)


def test__batch_centred_mining_space():
    model = _build(miner=dict(num_prototypes=4, threshold=0.0, center='batch'))
    assert 'mining_queue' in model.state_dict()
    views, samples = _batch(num=8)
    with torch.no_grad():
        model.loss(views, samples)
    # Slot j of mining_queue is slot j of teacher_queue centred on the mean
    # of its batch, re-normalised (closed form).
    keys = model.teacher_queue[:, :8].t()
    expected = torch.nn.functional.normalize(keys - keys.mean(0), dim=1)
    torch.testing.assert_close(model.mining_queue[:, :8].t(), expected)
    torch.testing.assert_close(model.filled_mining_keys(), expected)
    # A common offset added to all keys (the early teacher's drifting cone)
    # changes nothing in mining space.
    offset = torch.randn(1, keys.shape[1])
    torch.testing.assert_close(
        model.mining_space(keys + offset),
        model.mining_space(keys),
        atol=1e-5,
        rtol=0)
    # Without centring the mining space is the key space itself.
    plain = _build()
    torch.testing.assert_close(plain.mining_space(keys), keys)
    assert 'mining_queue' not in plain.state_dict()


def test__unknown_mining_centre_raises():
    with pytest.raises(ValueError, match='model.miner.center'):
        _build(miner=dict(num_prototypes=4, center='queue'))


def _bank_ready(**kwargs):
    """A model whose queue is full and whose bank is initialised."""
    model = _build(queue_len=16, num_prototypes=2, threshold=-1.0, **kwargs)
    for seed in range(2):
        model.loss(*_batch(seed=seed))
    model.miner.initialize(model.filled_mining_keys(), distributed=False)
    model.refresh_queue_assign()
    return model


def test__oracle_positive_mask_equals_label_equality():
    model = _bank_ready(relation_source='oracle_labels')
    # Queue labels of a small hand-made example: slots 0-15 hold classes
    # 0..3 (4 each); two slots never written (-1).
    model.queue_labels.copy_(torch.arange(16) % 4)
    model.queue_labels[[5, 9]] = -1
    anchors = torch.tensor([0, 1, 3, 3, 2, 0, 1, 2])
    mask, _ = model.mine_relations(
        F.normalize(torch.randn(8, 16), dim=1), labels=anchors)
    expected = anchors[:, None] == model.queue_labels[None]
    assert torch.equal(mask, expected)
    # Slot 5 (class 1, unwritten) is never a positive of a class-1 anchor.
    assert not mask[1, 5] and mask[1, 1]


def test__oracle_refuses_unlabelled_batches():
    model = _bank_ready(relation_source='oracle_labels')
    with pytest.raises(ValueError, match='oracle_labels.*gt_label'):
        model.loss(*_batch(seed=5, labels=False))


def test__unknown_relation_source_is_named():
    with pytest.raises(ValueError, match='model.relation_source'):
        _build(relation_source='labels')


def test__cap_keeps_the_most_similar_positives():
    model = _build(max_positives=2)
    pos_mask = torch.tensor([[True, True, True, False, True],
                             [False, True, False, False, False], [False] * 5])
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.99, 0.7], [0.3, 0.2, 0.1, 0.0, 0.0],
                        [0.5, 0.5, 0.5, 0.5, 0.5]])
    capped = model.cap_positives(pos_mask, sim)
    # Row 0: the two most similar positives (0.9 and 0.7), never the
    # more similar non-positive slot 3; row 1 keeps its only positive.
    assert capped.tolist() == [[False, True, False, False, True],
                               [False, True, False, False, False], [False] * 5]


def test__cap_is_applied_to_mined_relations():
    model = _bank_ready(max_positives=3)
    mask, _ = model.mine_relations(F.normalize(torch.randn(8, 16), dim=1))
    assert mask.sum(1).max() <= 3 and mask.sum() > 0


def test__relation_warmup_ramps_after_the_first_clustering():
    model = _bank_ready(relation_warmup_iters=4)
    calls = _spy_head(model)
    scales = []
    for seed in range(2, 8):
        losses = model.loss(*_batch(seed=seed))
        scales.append(float(calls[-1]['mined_scale']))
        assert losses['relation_scale'].item() == scales[-1]
    assert scales == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert int(model.mining_steps) == 6


def test__relation_warmup_clock_is_checkpointed():
    model = _bank_ready(relation_warmup_iters=4)
    model.loss(*_batch(seed=2))
    assert model.state_dict()['mining_steps'].item() == 1


@pytest.mark.parametrize('key, value', [('max_positives', 0),
                                        ('max_positives', 1.5)])
def test__bad_miner_knobs_are_named(key, value):
    with pytest.raises(ValueError, match=f'model.miner.{key}'):
        _build(**{key: value})


def test__bad_warmup_is_named():
    with pytest.raises(ValueError, match='model.relation_warmup_iters'):
        _build(relation_warmup_iters=-1)


def _sampled_oracle(precision, positives, **sample):
    model = _bank_ready(
        relation_source='oracle_labels',
        oracle_sample=dict(precision=precision, positives=positives, **sample))
    # Slots 0-15 hold classes 0..3 (4 each); slots 5 and 9 never written.
    model.queue_labels.copy_(torch.arange(16) % 4)
    model.queue_labels[[5, 9]] = -1
    return model


@pytest.mark.parametrize('precision, positives, same, other',
                         [(0.5, 4, 2, 2), (1.0, 3, 3, 0), (0.0, 5, 0, 5),
                          (0.75, 8, 6, 2), (0.25, 4, 1, 3)])
def test__sampled_oracle_has_the_set_precision_and_number(
        precision, positives, same, other):
    model = _sampled_oracle(precision, positives)
    anchors = torch.tensor([0, 1, 3, 3, 2, 0, 1, 2])
    mask, _ = model.mine_relations(
        F.normalize(torch.randn(8, 16), dim=1), labels=anchors)
    label_equal = anchors[:, None] == model.queue_labels[None]
    written = model.queue_labels[None] >= 0
    # Never an unwritten slot; per anchor exactly round(ρ·M) slots of its
    # class and M - round(ρ·M) of other classes, or all of its class when
    # the queue holds fewer: (0.75, 8) asks for 6, classes 0, 2 and 3 have 4
    # written slots, class 1 has 2 (slots 5 and 9 are unwritten).
    assert not (mask & ~written).any()
    num_same = (mask & label_equal).sum(1)
    num_other = (mask & ~label_equal).sum(1)
    available = (label_equal & written).sum(1)
    assert torch.equal(num_same, torch.clamp(available, max=same))
    assert (num_other == other).all()


def test__sampled_oracle_draws_per_step_reproducibly():
    first = _sampled_oracle(0.5, 4)
    second = _sampled_oracle(0.5, 4)
    anchors = torch.tensor([0, 1, 3, 3, 2, 0, 1, 2])
    keys = F.normalize(torch.randn(8, 16), dim=1)
    state = torch.get_rng_state()
    mask_a, _ = first.mine_relations(keys, labels=anchors)
    mask_b, _ = second.mine_relations(keys, labels=anchors)
    # Same clock, same draw (what a resumed run needs); the global random
    # stream is untouched.
    assert torch.equal(mask_a, mask_b)
    assert torch.equal(torch.get_rng_state(), state)
    # The next relation step draws anew.
    first.mining_steps.add_(1)
    mask_c, _ = first.mine_relations(keys, labels=anchors)
    assert not torch.equal(mask_a, mask_c)


@pytest.mark.parametrize('precision, positives', [(0.5, 4), (0.25, 8),
                                                  (0.0, 6)])
def test__sampled_oracle_draws_wrong_relations_from_the_bank(
        precision, positives, monkeypatch):
    anchors = torch.tensor([0, 1, 3, 3, 2, 0, 1, 2])
    keys = F.normalize(torch.randn(8, 16), dim=1)
    # A hand-made bank: slot j on prototype j % 3, anchor i on i % 3 except
    # anchor 7, which no prototype takes (-1: no bank relation at all).
    anchor_assign = torch.tensor([0, 1, 2, 0, 1, 2, 0, -1])
    masks = {}
    for wrong in ('uniform', 'bank'):
        model = _sampled_oracle(precision, positives, wrong=wrong)
        model.queue_assign.copy_(torch.arange(16) % 3)
        monkeypatch.setattr(model.miner, 'assign', lambda x:
                            (anchor_assign, None))
        masks[wrong], _ = model.mine_relations(keys, labels=anchors)
    label_equal = anchors[:, None] == model.queue_labels[None]
    other_class = ~label_equal & (model.queue_labels >= 0)[None]
    bank_wrong = (anchor_assign[:, None] == model.queue_assign[None]) \
        & (anchor_assign >= 0)[:, None] & other_class
    uniform, bank = masks['uniform'], masks['bank']
    # Same draw of the right relations and the same number of wrong ones:
    # only where the wrong ones fall differs.
    assert torch.equal(uniform & label_equal, bank & label_equal)
    assert torch.equal((uniform & other_class).sum(1),
                       (bank & other_class).sum(1))
    for i in range(8):
        picked = bank[i] & other_class[i]
        if int(picked.sum()) <= int(bank_wrong[i].sum()):
            # Enough mistakes of the bank: the wrong relations are all
            # among them.
            assert not (picked & ~bank_wrong[i]).any()
        else:
            # Too few: all of them, the rest drawn from the other slots.
            assert torch.equal(picked & bank_wrong[i], bank_wrong[i])
    # Some anchor's wrong relations differ from the uniform draw (else the
    # option would do nothing here).
    assert not torch.equal(uniform, bank)


@pytest.mark.parametrize('kwargs, match', [
    (dict(oracle_sample=dict(precision=0.5, positives=4)),
     "relation_source='oracle_labels'"),
    (dict(
        relation_source='oracle_labels',
        oracle_sample=dict(precision=1.5,
                           positives=4)), 'oracle_sample.precision'),
    (dict(
        relation_source='oracle_labels',
        oracle_sample=dict(precision=0.5,
                           positives=0)), 'oracle_sample.positives'),
    (dict(relation_source='oracle_labels',
          oracle_sample=dict(precision=0.5)), "keys 'precision'"),
    (dict(
        relation_source='oracle_labels',
        oracle_sample=dict(precision=0.5, positives=4,
                           wrong='teacher')), 'oracle_sample.wrong'),
    (dict(
        relation_source='oracle_labels',
        oracle_sample=dict(precision=0.5, positives=4,
                           bank=True)), "optionally 'wrong'"),
])
def test__bad_oracle_sample_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _build(**kwargs)

# Copyright (c) rekd_mm contributors. All rights reserved.
"""ReKD behaviours that matter on CUDA and under AMP, checked on CPU: the
teacher's momentum encoder after a teacher load, labels of mixed batches,
float32 logits under autocast, an exact (order-independent) bank update and
the device-side shuffle permutation."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import rekd_mm  # noqa: F401
from rekd_mm.models.algorithms.rekd import ReKD
from rekd_mm.models.utils.batch_shuffle import shuffle_permutation, splitmix64
from rekd_mm.models.utils.prototype_bank import PrototypeBank
from tests.toy_configs import toy_model_cfg

init_default_scope('mmpretrain')


def _build(**kwargs):
    torch.manual_seed(0)
    model = MODELS.build(toy_model_cfg(**kwargs))
    model.init_weights()
    return model


def _batch(num=8, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(num, 3, size, size, generator=gen) for _ in range(2)]
    return views, [DataSample().set_gt_label(i % 3) for i in range(num)]


def _teacher_checkpoint(tmp_path) -> str:
    torch.manual_seed(123)
    donor = MODELS.build(toy_model_cfg())
    state = {
        f'backbone.{k}': v
        for k, v in donor.teacher.backbone.state_dict().items()
    }
    state.update(
        {f'neck.{k}': v
         for k, v in donor.teacher.neck.state_dict().items()})
    path = str(tmp_path / 'teacher.pth')
    torch.save(dict(state_dict=state), path)
    return path


def test__loaded_online_teacher_is_what_iteration_0_clusters(tmp_path):
    """teacher_pretrained with frozen=False: the momentum encoder must hold
    the loaded weights at once, since a dataset clustering at iteration 0
    embeds with it before any update."""
    model = _build(
        teacher_pretrained=dict(
            checkpoint=_teacher_checkpoint(tmp_path), prefix='', frozen=False))
    teacher = nn.Sequential(model.teacher.backbone, model.teacher.neck)
    ema_state = model.teacher_encoder_k.module.state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(ema_state[key], value), key
    model.eval()  # as RelationMinerHook's dataset pass
    images = torch.randn(4, 3, 16, 16)
    expected = F.normalize(teacher(images)[0], dim=1)
    torch.testing.assert_close(model.teacher_embed(images), expected)


def test__mixed_labelled_and_unlabelled_batch_stacks_on_the_device():
    # 'meta' stands in for CUDA: a CPU tensor cannot join it in a stack.
    device = torch.device('meta')
    samples = [
        DataSample().set_gt_label(3).to(device),
        DataSample(),
        DataSample().set_gt_label(5).to(device),
    ]
    labels = ReKD.batch_labels(samples, 3, device)
    assert labels.device == device and labels.dtype == torch.long
    assert labels.shape == (3, )
    cpu = ReKD.batch_labels([DataSample().set_gt_label(3),
                             DataSample()], 2, torch.device('cpu'))
    assert cpu.tolist() == [3, -1]


def test__teacher_and_student_logits_are_float32_under_autocast():
    model = _build()
    model.train()
    seen = {}
    original = model.teacher_head.loss

    def spy(pos, neg):
        seen.update(pos=pos, neg=neg)
        return original(pos, neg)

    model.teacher_head.loss = spy
    student = []
    student_loss = model.head.loss

    def student_spy(*args, **kwargs):
        student.append((args, kwargs))
        return student_loss(*args, **kwargs)

    model.head.loss = student_spy
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(*_batch())
    assert seen['pos'].dtype == seen['neg'].dtype == torch.float32
    # The student's relation loss is the float32 one of the same inputs.
    (args, kwargs), = student
    torch.testing.assert_close(
        losses['loss_relation'],
        student_loss(*args, **kwargs),
        rtol=0,
        atol=1e-6)


def test__contrastive_logits_keep_float32_precision_under_autocast():
    gen = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(8, 16, generator=gen), dim=1)
    key = F.normalize(torch.randn(8, 16, generator=gen), dim=1)
    queue = F.normalize(torch.randn(16, 64, generator=gen), dim=0)
    exact = (query.double() @ queue.double()).float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        l_pos, l_neg = ReKD.contrastive_logits(query, key, queue)
    torch.testing.assert_close(l_neg, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        l_pos[:, 0], (query * key).sum(1), rtol=0, atol=1e-6)


def test__bank_update_does_not_depend_on_the_order_of_the_batch():
    """The result must be bit-identical whatever order the sums are
    accumulated in (on CUDA, atomics choose a different order per rank)."""
    gen = torch.Generator().manual_seed(0)
    bank = PrototypeBank(num_prototypes=3, feat_dim=16, threshold=-1.0)
    bank.prototypes.copy_(F.normalize(torch.randn(3, 16, generator=gen)))
    keys = F.normalize(torch.randn(512, 16, generator=gen), dim=1)
    results = []
    for seed in range(3):
        order = torch.randperm(
            512, generator=torch.Generator().manual_seed(seed))
        copy = PrototypeBank(num_prototypes=3, feat_dim=16, threshold=-1.0)
        copy.load_state_dict(bank.state_dict())
        assign, sim = copy.assign(keys[order])
        copy.update(keys[order], assign, sim)
        results.append(copy.prototypes)
    assert all(torch.equal(results[0], r) for r in results[1:])
    assert not torch.equal(results[0], bank.prototypes)  # it moved


def test__bank_update_equals_the_closed_form():
    bank = PrototypeBank(
        num_prototypes=2, feat_dim=2, threshold=0.1, momentum=0.5)
    bank.prototypes.copy_(torch.tensor([[1., 0.], [0., 1.]]))
    keys = F.normalize(torch.tensor([[1., 0.2], [1., -0.1], [-1., 0.]]), dim=1)
    assign, sim = bank.assign(keys)
    assert assign.tolist() == [0, 0, -1]
    bank.update(keys, assign, sim)
    s = sim[:2]
    target = (s[:, None] * keys[:2]).sum(0) / s.sum()
    m = 1 - 0.5 * s.mean()
    expected = F.normalize(
        m * torch.tensor([1., 0.]) + (1 - m) * target, dim=0)
    torch.testing.assert_close(bank.prototypes[0], expected)
    assert torch.equal(bank.prototypes[1], torch.tensor([0., 1.]))


def test__nonfinite_keys_leave_the_bank_and_stop_the_next_step():
    model = _build(threshold=-1.0)
    model.train()
    for seed in range(8):
        model.loss(*_batch(seed=seed))
    model.miner.initialize(model.filled_mining_keys(), distributed=False)
    model.refresh_queue_assign()
    bank = model.miner.prototypes.clone()
    keys = torch.full((16, 16), float('nan'))
    model.update_bank(keys)
    assert torch.equal(model.miner.prototypes, bank)
    try:
        model.loss(*_batch(seed=9))
    except FloatingPointError as err:
        assert 'NaN or inf' in str(err)
    else:
        raise AssertionError('the step after non-finite keys must stop')


def test__shuffle_permutation_is_a_function_of_the_step():

    def reference(x):  # splitmix64 on Python ints
        x = (x + 0x9E3779B97F4A7C15) % 2**64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
        return x ^ (x >> 31)

    values = torch.tensor([0, 1, 12345, 2**40 + 7])
    hashed = [v % 2**64 for v in splitmix64(values).tolist()]
    assert hashed == [reference(v) for v in values.tolist()]

    perms = [shuffle_permutation(torch.tensor(s), 16) for s in (5, 5, 6)]
    assert sorted(perms[0].tolist()) == list(range(16))
    assert torch.equal(perms[0], perms[1])
    assert not torch.equal(perms[0], perms[2])
    assert not torch.equal(perms[0], torch.arange(16))


def test__salted_permutation_hashes_the_counters_xor_the_salt():
    """The salt is XOR-ed into the counters ``step * num + i`` before the
    hash (closed form); salt 0 is the unsalted sequence."""
    step, num = torch.tensor(5), 16
    salt = torch.tensor(0x5DEECE66D << 20)
    counters = step * num + torch.arange(num)
    expected = torch.argsort(splitmix64(counters ^ salt), stable=True)
    assert torch.equal(shuffle_permutation(step, num, salt), expected)
    assert torch.equal(
        shuffle_permutation(step, num, torch.tensor(0)),
        shuffle_permutation(step, num))
    assert not torch.equal(expected, shuffle_permutation(step, num))


def test__seeded_salt_is_read_from_the_seed_not_drawn():
    from rekd_mm.models.utils.batch_shuffle import seeded_shuffle_salt
    salts = []
    for seed in (0, 0, 1, 2**64 - 1):
        torch.manual_seed(seed)
        salts.append(seeded_shuffle_salt())
        draw = torch.rand(2)
        torch.manual_seed(seed)
        assert torch.equal(draw, torch.rand(2))  # the RNG did not move
    assert salts[0] == salts[1]
    assert len({int(s) for s in salts[1:]}) == 3
    assert salts[-1] == splitmix64(torch.tensor(-1))  # 2**64 - 1 as int64

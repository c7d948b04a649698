# Copyright (c) rekd_mm contributors. All rights reserved.
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_gather, broadcast, get_rank, get_world_size
from mmengine.logging import MMLogger
from mmengine.model import ModuleDict
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from rekd_mm.utils.encoder_weights import ENCODER_WEIGHTS, load_encoder_weights
from ..utils.batch_shuffle import (gather_shuffled, gather_unshuffled,
                                   seeded_shuffle_salt, shuffle_permutation)
from ..utils.ema import SyncFreeEMA
from ..utils.prototype_bank import PrototypeBank, count_used
from ..utils.split_batch_norm import SplitBatchNorm, has_split_batch_norm
from ..utils.top_k_mask import top_k_of_mask


@MODELS.register_module()
class ReKD(BaseSelfSupervisor):
    """ReKD: contrastive learning boosted by relation knowledge distillation.

    Implementation of `Boosting Contrastive Learning with Relation Knowledge
    Distillation <https://arxiv.org/abs/2112.04174>`_ (AAAI 2022). A larger,
    heterogeneous teacher is trained online next to the student, each with
    its own MoCo v2 machinery. A prototype bank in the teacher's space mines
    which instances are semantically the same; those relations become extra
    positives of the student's contrastive loss.

    Layout of the state dict (and so of checkpoints):

    - ``backbone.*``, ``neck.*``: the student, loadable by mmpretrain and
      mmdet configs with ``prefix='backbone.'``;
    - ``encoder_k.*``: the student's momentum encoder (as in ``MoCo``);
    - ``teacher.backbone.*``, ``teacher.neck.*``, ``teacher_encoder_k.*``:
      the teacher and its momentum encoder;
    - ``queue`` ``(D, L)`` / ``teacher_queue`` ``(D_t, L)``: index-aligned
      key queues (slot ``j`` of both comes from the same past image; D is
      ``feat_dim``, D_t ``teacher_feat_dim``), with ``queue_ptr``,
      ``queue_labels`` (-1 when the data set has no label; labels are only
      used for the logged relation precision, never for training),
      ``queue_assign`` (cached prototype of each teacher slot) and
      ``queue_count``;
    - ``miner.*``: the :class:`PrototypeBank` (K x D_t);
    - ``kd_projection.*``: with ``kd_projection=True`` only, the student's
      learnt map of its query into the teacher's dimension.

    The student and the teacher may embed in different dimensions: relations
    are mined in the teacher's space only (teacher queue, ``mining_queue``,
    bank), and the student's loss only reads the mined ``(N, L)`` mask, whose
    slots are index-aligned whatever the two dimensions. Only the optional
    response distillation compares ``q_s`` with ``q_t`` directly, so it needs
    equal dimensions or ``kd_projection``.

    Args:
        backbone (dict): Config of the student backbone.
        neck (dict): Config of the student neck (e.g. ``MoCoV2Neck``).
        head (dict): Config of the student's relation head
            (``RelationContrastiveHead``).
        teacher_backbone (dict): Config of the teacher backbone.
        teacher_neck (dict): Config of the teacher neck. Its first output,
            ``(N, D_t)``, is the teacher's embedding (for DenseCL's
            ``DenseCLNeck`` the global projection; its dense outputs are
            loaded but unused). A pretrained backbone without its neck can
            use ``dict(type='GlobalAveragePooling')`` (no weights) with
            ``teacher_feat_dim`` = the backbone's channels.
        teacher_head (dict): Config of the teacher's contrastive head
            (mmpretrain's ``ContrastiveHead``).
        miner (dict): Arguments of :class:`PrototypeBank`
            (``num_prototypes``, ``threshold``, ``momentum``) plus
            ``queue_refresh_interval`` (int): the prototype of every teacher
            queue slot is cached when the slot is written and all slots are
            re-assigned every this many iterations (1 = exact every
            iteration; default 10, which mis-assigns ~0.1% of the slots on
            the demo, see docs/performance.md). Defaults to
            ``dict(num_prototypes=1000)``. ``center`` (None or ``'batch'``,
            default None) mines in a batch-centred teacher space, see
            :meth:`mining_space`. ``max_positives`` (int or None, default
            None): keep at most this many mined positives per anchor, the
            most similar to it in the mining space.
        queue_len (int): Length L of both queues. Must be a multiple of the
            global batch size. Defaults to 65536.
        feat_dim (int): Output dimension D of the student's neck (the
            student queue). Defaults to 128.
        teacher_feat_dim (int, optional): Output dimension D_t of the
            teacher's neck: the teacher queue, ``mining_queue`` and the
            prototype bank live in it. Defaults to None (``feat_dim``).
        momentum (float): Momentum of the student's momentum encoder in
            mmengine's convention, i.e. the weight of the NEW value: MoCo's
            0.999 is written 0.001. Defaults to 0.001.
        teacher_momentum (float, optional): The same for the teacher.
            Defaults to None (same as ``momentum``).
        loss_weights (dict, optional): ``teacher`` (w_t), ``relation``
            (w_rel) and ``kd`` (w_kd, response distillation
            ``2 - 2 cos(q_s, q_t)``; with D != D_t it needs
            ``kd_projection``). Defaults to
            ``dict(teacher=1.0, relation=1.0, kd=0.0)``.
        kd_projection (bool): Map the student's unit query into the
            teacher's dimension with a learnt ``nn.Linear(D, D_t)`` (part of
            the student, trained by ``loss_kd`` alone) and re-normalise it
            before the response distillation. Needs ``kd > 0``.
            Defaults to False.
        teacher_pretrained (dict, optional): Offline-teacher mode, loaded
            with ``weights_only=True`` (a checkpoint never runs code) at
            :meth:`init_weights`. Keys:

            - ``checkpoint`` (str): any mmpretrain / mmselfsup
              self-supervised checkpoint, a ReKD checkpoint, or a plain
              state dict (e.g. ``tools/model_converters/extract_backbone.py``
              or ``ExportWeightsHook`` output);
            - ``weights`` (str): which encoder of the file, see
              :func:`~rekd_mm.utils.encoder_weights.resolve_encoder_mapping`:
              ``'online'`` (``<prefix>backbone.*``, ``<prefix>neck.*``),
              ``'momentum'`` (``<prefix>module.0.*``/``module.1.*``: MoCo
              v2's and DenseCL's ``encoder_k.``, MoCo v3's
              ``momentum_encoder.``, BYOL's ``target_net.``), ``'backbone'``
              (a plain backbone state dict, no neck) or ``'auto'`` (the
              default: the only online encoder, else the only momentum
              encoder, else a plain backbone; ambiguous files are refused
              and the choice is logged);
            - ``prefix`` (str, optional): the part of the file's keys before
              those, e.g. ``'teacher.'`` for the teacher of a ReKD
              checkpoint. Defaults to None (found in the file; ``''`` for
              ``'online'``);
            - ``frozen`` (bool): no teacher loss and no teacher update.
              Defaults to True. A frozen teacher must be loaded completely:
              a weight that the file leaves at its random initialisation is
              an error (an online teacher only warns).

            Defaults to None (online teacher).
        relation_source (str): Where the student's extra positives come
            from: ``'miner'`` (the method) or ``'oracle_labels'``, same true
            class (an analysis upper bound that TRAINS WITH LABELS; never a
            default). The oracle follows the miner's schedule: it acts only
            once the bank is initialised. Defaults to ``'miner'``.
        oracle_sample (dict, optional): Analysis only, with
            ``relation_source='oracle_labels'``: instead of every slot of the
            anchor's class, each anchor gets ``positives`` (int) slots drawn
            at random, ``round(precision * positives)`` of its class and the
            rest of other classes (``precision`` in [0, 1]), i.e. relations
            of a set precision and number, like a miner's. Measures how
            precise mined relations must be to help (docs/method.md #25).
            The optional key ``wrong`` says where the wrong ones fall:
            ``'uniform'`` (default: any written slot of another class) or
            ``'bank'`` (first the other-class slots the bank relates to the
            anchor, i.e. the miner's own mistakes, then uniform if there are
            too few; docs/method.md #26). Defaults to None (all same-class
            slots).
        relation_warmup_iters (int): The mined positives' share of the
            student's positive weight ramps linearly from 0 to its full value
            over this many iterations after the bank's first clustering (see
            ``RelationContrastiveHead``). Defaults to 0 (no warm-up).
        data_preprocessor (dict, optional): Defaults to
            ``SelfSupDataPreprocessor``.
        init_cfg (dict or list[dict], optional): Initialisation config.
    """

    RELATION_SOURCES = ('miner', 'oracle_labels')
    # Keys of ``model.miner`` that ReKD itself reads (the rest go to
    # PrototypeBank).
    MINER_OPTIONS = ('queue_refresh_interval', 'center', 'max_positives')

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 head: dict,
                 teacher_backbone: dict,
                 teacher_neck: dict,
                 teacher_head: dict,
                 miner: Optional[dict] = None,
                 queue_len: int = 65536,
                 feat_dim: int = 128,
                 momentum: float = 0.001,
                 teacher_momentum: Optional[float] = None,
                 loss_weights: Optional[dict] = None,
                 teacher_pretrained: Optional[dict] = None,
                 teacher_feat_dim: Optional[int] = None,
                 kd_projection: bool = False,
                 relation_source: str = 'miner',
                 relation_warmup_iters: int = 0,
                 oracle_sample: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[List[dict], dict]] = None) -> None:
        teacher_dim = (
            feat_dim if teacher_feat_dim is None else teacher_feat_dim)
        for dim, name in ((feat_dim, 'feat_dim'), (teacher_dim,
                                                   'teacher_feat_dim')):
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f'model.{name} must be a positive integer, '
                                 f'got {dim!r}')
        # How to name the teacher's dimension in messages.
        teacher_dim_key = (
            f'model.teacher_feat_dim={teacher_dim}' if teacher_feat_dim
            is not None else f'model.feat_dim={feat_dim} (model.'
            'teacher_feat_dim is None: the teacher shares feat_dim)')
        self._check_neck_widths(neck, teacher_neck, feat_dim, teacher_dim,
                                teacher_dim_key)
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        self.teacher = ModuleDict(
            dict(
                backbone=MODELS.build(teacher_backbone),
                neck=MODELS.build(teacher_neck)))
        self.teacher_head = MODELS.build(teacher_head)
        self._check_student_head(head)
        self.feat_dim = feat_dim
        self.teacher_feat_dim = teacher_dim
        # Whether the teacher's dimension is feat_dim's (unset), and how to
        # name it in messages.
        self.teacher_dim_shared = teacher_feat_dim is None
        self.teacher_dim_key = teacher_dim_key

        self.loss_weights = dict(teacher=1.0, relation=1.0, kd=0.0)
        unknown = set(loss_weights or {}) - set(self.loss_weights)
        if unknown:
            raise ValueError(f'model.loss_weights has unknown keys {unknown};'
                             f' valid keys are {sorted(self.loss_weights)}')
        self.loss_weights.update(loss_weights or {})
        self.kd_projection = self._build_kd_projection(kd_projection)

        self.teacher_pretrained = None
        if teacher_pretrained is not None:
            self.teacher_pretrained = dict(
                prefix=None, weights='auto', frozen=True)
            unknown = sorted(
                set(teacher_pretrained) - set(self.teacher_pretrained) -
                {'checkpoint'})
            if unknown:
                raise ValueError(
                    f'model.teacher_pretrained has unknown keys {unknown}; '
                    "valid keys are ['checkpoint', 'frozen', 'prefix', "
                    "'weights']")
            self.teacher_pretrained.update(teacher_pretrained)
            if 'checkpoint' not in self.teacher_pretrained:
                raise ValueError('model.teacher_pretrained needs a '
                                 "'checkpoint' (path to the teacher weights)")
            if self.teacher_pretrained['weights'] not in ENCODER_WEIGHTS:
                raise ValueError(
                    'model.teacher_pretrained.weights must be one of '
                    f'{ENCODER_WEIGHTS}, got '
                    f'{self.teacher_pretrained["weights"]!r}')
        self.teacher_frozen = bool(self.teacher_pretrained
                                   and self.teacher_pretrained['frozen'])

        # mmengine's EMA, minus its two host reads of ``steps`` per update.
        self.encoder_k = SyncFreeEMA(
            nn.Sequential(self.backbone, self.neck), momentum)
        if self.teacher_frozen:
            # A frozen teacher is its own momentum encoder.
            self.teacher_encoder_k = None
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        else:
            self.teacher_encoder_k = SyncFreeEMA(
                nn.Sequential(self.teacher.backbone, self.teacher.neck),
                momentum if teacher_momentum is None else teacher_momentum)
        # Split BN (MoCo's shuffle-BN on one process) needs the keys
        # shuffled even on one process, see :meth:`shuffle_permutation`.
        self.split_batch_norm = has_split_batch_norm(self)
        # Selects this run's sequence of shuffle permutations, as MoCo's
        # seeded draws do; checkpointed, so a resumed run keeps it. Rank 0's
        # is broadcast: with ``randomness.diff_rank_seed`` the ranks' seeds
        # differ, and every rank must shuffle alike.
        self.register_buffer('shuffle_salt', seeded_shuffle_salt())
        broadcast(self.shuffle_salt, src=0)

        if relation_source not in self.RELATION_SOURCES:
            raise ValueError(f'model.relation_source must be one of '
                             f'{self.RELATION_SOURCES}, got '
                             f'{relation_source!r}')
        self.relation_source = relation_source
        self.oracle_sample = self._check_oracle_sample(oracle_sample,
                                                       relation_source)
        if int(relation_warmup_iters) != relation_warmup_iters or \
                relation_warmup_iters < 0:
            raise ValueError('model.relation_warmup_iters must be an integer '
                             f'>= 0, got {relation_warmup_iters!r}')
        self.relation_warmup_iters = int(relation_warmup_iters)

        miner = dict(num_prototypes=1000) if miner is None else dict(miner)
        self.max_positives = miner.pop('max_positives', None)
        if self.max_positives is not None and (
                int(self.max_positives) != self.max_positives
                or self.max_positives < 1):
            raise ValueError('model.miner.max_positives must be None or an '
                             f'integer >= 1, got {self.max_positives!r}')
        self.queue_refresh_interval = int(
            miner.pop('queue_refresh_interval', 10))
        self.mining_center = miner.pop('center', None)
        if self.mining_center not in (None, 'batch'):
            raise ValueError("model.miner.center must be None or 'batch', "
                             f'got {self.mining_center!r}')
        if self.queue_refresh_interval < 1:
            raise ValueError('model.miner.queue_refresh_interval must be >= '
                             f'1, got {self.queue_refresh_interval}')
        bank_keys = ('num_prototypes', 'threshold', 'momentum')
        unknown = sorted(set(miner) - set(bank_keys))
        if unknown:
            raise TypeError(
                f'model.miner has unknown keys {unknown}; valid keys are '
                f'{sorted(bank_keys + self.MINER_OPTIONS)}')
        # The bank lives in the teacher's (mining) space.
        self.miner = PrototypeBank(feat_dim=self.teacher_feat_dim, **miner)

        if queue_len < 1:
            raise ValueError(f'model.queue_len must be >= 1, got {queue_len}')
        self.queue_len = queue_len
        self.register_buffer(
            'queue', F.normalize(torch.randn(self.feat_dim, queue_len), dim=0))
        self.register_buffer(
            'teacher_queue',
            F.normalize(torch.randn(self.teacher_feat_dim, queue_len), dim=0))
        self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))
        # Slots written so far (saturates at L): k-means on the queue must
        # only see real keys, never the random initial ones.
        self.register_buffer('queue_count', torch.zeros((), dtype=torch.long))
        self.register_buffer('queue_labels',
                             torch.full((queue_len, ), -1, dtype=torch.long))
        self.register_buffer('queue_assign',
                             torch.full((queue_len, ), -1, dtype=torch.long))
        # Iterations since the queue's assignments were last fully refreshed.
        self.register_buffer('queue_assign_age',
                             torch.zeros((), dtype=torch.long))
        # Iterations trained with an initialised bank (the relation warm-up's
        # clock; checkpointed so that a resumed run ramps the same way).
        self.register_buffer('mining_steps', torch.zeros((), dtype=torch.long))
        if self.mining_center is not None:
            # Index-aligned mining-space copy of the teacher queue: each key
            # centred on the mean of its own global batch, re-normalised.
            self.register_buffer('mining_queue',
                                 torch.zeros(self.teacher_feat_dim, queue_len))

    @staticmethod
    def _check_oracle_sample(oracle_sample: Optional[dict],
                             relation_source: str) -> Optional[dict]:
        """Validate ``model.oracle_sample`` (see the class docstring)."""
        if oracle_sample is None:
            return None
        if relation_source != 'oracle_labels':
            raise ValueError(
                'model.oracle_sample draws relations from the labels: it '
                "needs model.relation_source='oracle_labels', got "
                f'{relation_source!r} (remove model.oracle_sample to mine)')
        required = {'precision', 'positives'}
        if not isinstance(oracle_sample, dict) or not required <= set(
                oracle_sample) <= required | {'wrong'}:
            raise ValueError(
                'model.oracle_sample must be a dict with the keys '
                "'precision' (float in [0, 1]) and 'positives' (int >= 1), "
                "and optionally 'wrong' ('uniform' or 'bank'), got "
                f'{oracle_sample!r}')
        precision = oracle_sample['precision']
        positives = oracle_sample['positives']
        if isinstance(precision, bool) or not isinstance(
                precision, (int, float)) or not 0 <= precision <= 1:
            raise ValueError('model.oracle_sample.precision must be in '
                             f'[0, 1], got {precision!r}')
        if isinstance(positives, bool) or not isinstance(positives, int) \
                or positives < 1:
            raise ValueError('model.oracle_sample.positives must be an '
                             f'integer >= 1, got {positives!r}')
        wrong = oracle_sample.get('wrong', 'uniform')
        if wrong not in ('uniform', 'bank'):
            raise ValueError("model.oracle_sample.wrong must be 'uniform' or "
                             f"'bank', got {wrong!r}")
        return dict(
            precision=float(precision), positives=positives, wrong=wrong)

    @staticmethod
    def _check_neck_widths(neck: dict, teacher_neck: dict, feat_dim: int,
                           teacher_dim: int, teacher_dim_key: str) -> None:
        """Refuse, at build time, a neck whose ``out_channels`` is not its
        side's dimension (naming the key to change)."""
        for name, cfg, dim, dim_key in (('neck', neck, feat_dim,
                                         f'model.feat_dim={feat_dim}'),
                                        ('teacher_neck', teacher_neck,
                                         teacher_dim, teacher_dim_key)):
            out = cfg.get('out_channels') if isinstance(cfg, dict) else None
            if out is None or out == dim:
                continue
            if name == 'neck':
                why = ('the student keys fill the student queue (feat_dim x '
                       'queue_len): set model.feat_dim or the neck width.')
            else:
                why = ('the teacher keys fill the teacher queue and the '
                       'prototype bank (teacher_feat_dim x ...): set '
                       f'model.teacher_feat_dim={out} to give the teacher '
                       'its own dimension, or change the neck width.')
            raise ValueError(f'model.{name}.out_channels={out} differs from '
                             f'{dim_key}: {why}')

    def _build_kd_projection(self, enabled: bool) -> Optional[nn.Module]:
        """The student's learnt map into the teacher's dimension for the
        response distillation, or None; refuses a distillation between
        dimensions that differ."""
        kd = self.loss_weights['kd']
        if not isinstance(enabled, bool):
            raise TypeError('model.kd_projection must be True or False, got '
                            f'{enabled!r}')
        if enabled and not kd > 0:
            # An unused projection would hold parameters without gradient
            # (an error under DDP) and train nothing.
            raise ValueError(
                'model.kd_projection=True maps the student query for the '
                f'response distillation, but model.loss_weights.kd={kd}: set '
                'loss_weights.kd > 0 or kd_projection=False.')
        if enabled:
            # Drawn from a forked generator: switching the distillation on
            # must not shift the random stream that then initialises the
            # networks and the queues, so that runs with and without it
            # start from the same weights (a paired ablation). The fork's
            # seed is derived from the run's seed, so it is reproducible.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((torch.initial_seed() + 1) % 2**63)
                return nn.Linear(self.feat_dim, self.teacher_feat_dim)
        if kd > 0 and self.feat_dim != self.teacher_feat_dim:
            raise ValueError(
                f'model.loss_weights.kd={kd} compares the student query '
                f'(model.feat_dim={self.feat_dim}) with the teacher query '
                f'({self.teacher_dim_key}), which needs equal dimensions: '
                'set model.kd_projection=True (a learnt linear map of the '
                "student query into the teacher's dimension, trained by "
                'loss_kd), make the two dimensions equal, or set '
                'model.loss_weights.kd=0.')
        return None

    def init_weights(self) -> None:
        """Initialise weights, then load the offline teacher if configured."""
        super().init_weights()
        if self.teacher_pretrained is not None:
            self.load_teacher(self.teacher_pretrained['checkpoint'],
                              self.teacher_pretrained['prefix'],
                              self.teacher_pretrained['weights'])

    def load_teacher(self,
                     checkpoint: str,
                     prefix: Optional[str] = None,
                     weights: str = 'auto') -> None:
        """Load teacher backbone and neck weights (``weights_only=True``).

        A frozen teacher must come out of the file complete: a weight left
        at its random initialisation is an error naming the file and the
        keys. An online teacher trains anyway, so it only warns.

        Args:
            checkpoint (str): Path to a checkpoint or a plain state dict.
            prefix (str, optional): The part of the file's keys before the
                encoder's (see ``teacher_pretrained``). Defaults to None.
            weights (str): ``'auto'``, ``'online'``, ``'momentum'`` or
                ``'backbone'`` (see ``teacher_pretrained``). Defaults to
                ``'auto'``.
        """
        # A file that matches nothing, an ambiguous file or a mis-shaped key
        # is always an error.
        load_encoder_weights(
            self.teacher,
            checkpoint,
            weights=weights,
            prefix=prefix,
            strict=self.teacher_frozen,
            what='teacher',
            cfg_key='model.teacher_pretrained',
            missing_hint=(
                'A frozen teacher never trains them, so it would mine with a '
                'partly random network. Set model.teacher_neck (and '
                "model.teacher_backbone) to the checkpoint's architecture, or "
                'set model.teacher_pretrained.frozen=False to train the '
                'teacher online from these weights.' if self.teacher_frozen
                else 'The online teacher trains them from their '
                'initialisation.'))
        if self.teacher_encoder_k is not None:
            # Restart the teacher EMA from the loaded weights, now: it was
            # copied from the teacher in __init__, before this load, and
            # teacher_embed (e.g. a dataset clustering at iteration 0) reads
            # it before the first update would copy the weights over.
            ema = self.teacher_encoder_k
            ema.module.load_state_dict(
                nn.Sequential(self.teacher.backbone,
                              self.teacher.neck).state_dict())
            ema.steps.zero_()
        MMLogger.get_current_instance().info(
            f'The teacher loaded from {checkpoint} is '
            f"{'frozen' if self.teacher_frozen else 'trained online'}.")

    def train(self, mode: bool = True) -> 'ReKD':
        """Set train mode, keeping a frozen teacher in eval mode."""
        super().train(mode)
        if self.teacher_frozen:
            self.teacher.eval()
        return self

    def _check_student_head(self, head_cfg: dict) -> None:
        """Refuse a student head whose ``loss`` cannot take the mined
        positives (e.g. mmpretrain's ``ContrastiveHead``, which would only
        fail at the first step)."""
        import inspect
        params = inspect.signature(self.head.loss).parameters
        if 'pos_mask' not in params:
            head_type = head_cfg.get('type') if isinstance(
                head_cfg, dict) else type(self.head).__name__
            raise TypeError(
                f'model.head.type={head_type!r} cannot take the positives '
                "that ReKD mines: its loss() has no 'pos_mask' argument "
                f'(it takes {list(params)}). Use '
                "head=dict(type='RelationContrastiveHead', temperature=...) "
                'for the student; mmpretrain\'s ContrastiveHead belongs in '
                'model.teacher_head.')

    def confirm_mining_schedule(self, description: str) -> None:
        """Called by :class:`RelationMinerHook` once it has checked, before
        iteration 1, that it is the only miner hook and that the bank will
        be clustered in this run (or that the user opted out)."""
        self._mining_schedule = description

    def forward(self,
                inputs: Union[torch.Tensor, List[torch.Tensor]],
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """``BaseSelfSupervisor.forward``; training (``mode='loss'``) needs
        a :class:`RelationMinerHook` that checked the schedule, because
        without one the bank is never clustered and no relation is mined,
        silently."""
        if mode == 'loss' and getattr(self, '_mining_schedule', None) is None:
            raise RuntimeError(
                'ReKD is training without a RelationMinerHook: the '
                'prototype bank would never be clustered and no relation '
                'mined (ReKD would silently train two MoCo v2). Add '
                "custom_hooks=[dict(type='RelationMinerHook', init_iter=N, "
                "source='queue')] to the config. To train without mining on "
                'purpose, add the hook with allow_no_mining=True.')
        return super().forward(inputs, data_samples, mode)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args,
                              **kwargs) -> None:
        """Check the checkpoint's bank and queues against this model before
        anything is loaded (see ``rekd_mm.models.utils.state_check``).

        A ReKD checkpoint written before ``shuffle_salt`` existed shuffled
        with salt 0; it resumes with salt 0, so that it goes on exactly as
        it would have (``state_dict`` is the loader's copy).
        """
        from ..utils.state_check import check_loaded_state
        source = getattr(self, 'state_source', None)
        check_loaded_state(
            self,
            state_dict,
            prefix,
            policy=getattr(self, 'state_mismatch_policy', 'error'),
            source=source)
        salt_key = prefix + 'shuffle_salt'
        if salt_key not in state_dict and \
                prefix + 'teacher_queue' in state_dict:
            state_dict[salt_key] = torch.zeros_like(self.shuffle_salt)
            MMLogger.get_current_instance().warning(
                f'{source or "The checkpoint"} has no {salt_key!r} (written '
                'before the shuffle salt existed): it goes on with salt 0, '
                'the permutations it was trained with')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extract_teacher_feat(self, inputs: torch.Tensor) -> Tuple:
        """Teacher backbone features, e.g. for kNN or the miner's dataset
        pass."""
        return self.teacher.backbone(inputs)

    @torch.no_grad()
    def teacher_embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of the teacher's momentum encoder, the
        space in which relations are mined.

        Before its first update the momentum encoder is, by definition, the
        teacher itself (the first update copies the teacher's weights): the
        teacher is used then, so that a clustering at iteration 0 never sees
        weights that training would have overwritten.
        """
        teacher = nn.Sequential(self.teacher.backbone, self.teacher.neck)
        encoder = teacher
        if self.teacher_encoder_k is not None and bool(
                self.teacher_encoder_k.steps > 0):
            encoder = self.teacher_encoder_k
        embedding = self._check_embedding(encoder(inputs)[0], teacher=True)
        return F.normalize(embedding.float(), dim=1)

    def _check_embedding(self, embedding: torch.Tensor,
                         teacher: bool) -> torch.Tensor:
        """Return ``embedding`` if it is ``(N, D)`` (student) or ``(N, D_t)``
        (teacher), else raise naming the neck and the dimension key.

        Necks without ``out_channels`` (e.g. ``GlobalAveragePooling``)
        escape the build-time check; a wrong width would otherwise fail
        deep inside a queue write. Shapes are known on the host: no
        synchronisation.
        """
        if teacher:
            dim, key, neck = (self.teacher_feat_dim, self.teacher_dim_key,
                              'model.teacher_neck')
        else:
            dim, key, neck = (self.feat_dim, f'model.feat_dim={self.feat_dim}',
                              'model.neck')
        if embedding.dim() != 2 or embedding.shape[1] != dim:
            raise ValueError(
                f'{neck} gives embeddings of shape {tuple(embedding.shape)} '
                f'(its first output), but {key} expects (N, {dim}): set the '
                'dimension to the neck\'s output width, or use a neck that '
                'pools to one vector per image.')
        return embedding

    def mining_space(self,
                     keys: torch.Tensor,
                     center: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Map unit teacher keys to the space the relation miner works in.

        Without ``miner.center`` this is the teacher's key space itself. With
        ``miner.center='batch'`` each key is centred on ``center`` (the mean
        of its global batch) and re-normalised: early in training an online
        teacher's keys share a large, drifting common component, which would
        otherwise decide every assignment (see docs/method.md).

        Args:
            keys (Tensor): ``(N, D_t)`` unit teacher keys.
            center (Tensor, optional): ``(D_t,)`` centre; defaults to the
                mean of ``keys``.

        Returns:
            Tensor: ``(N, D_t)`` float unit vectors.
        """
        keys = keys.float()
        if self.mining_center is None:
            return keys
        if center is None:
            center = keys.mean(0)
        return F.normalize(keys - center, dim=1)

    def _mining_queue(self) -> torch.Tensor:
        """The ``(D_t, L)`` teacher queue in mining space."""
        return (self.teacher_queue
                if self.mining_center is None else self.mining_queue)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """Update the student's (and an online teacher's) momentum encoder
        (no host read, see :class:`SyncFreeEMA`)."""
        self.encoder_k.update_parameters(
            nn.Sequential(self.backbone, self.neck))
        if self.teacher_encoder_k is not None:
            self.teacher_encoder_k.update_parameters(
                nn.Sequential(self.teacher.backbone, self.teacher.neck))

    def shuffle_permutation(self, batch_size: int) -> Optional[torch.Tensor]:
        """The shuffle-BN permutation of this step's global batch, or None on
        one process without :class:`SplitBatchNorm` (BN statistics over the
        whole batch do not depend on its order; with split BN they do, and
        the shuffle is what keeps a query's batch-mates and its key's apart).

        mmpretrain's shuffle draws from the global RNG on rank 0 and
        broadcasts it; mmengine does not checkpoint that RNG, so a resumed
        run would shuffle (and so normalise) differently from an
        uninterrupted one. This permutation is a function of the student
        momentum encoder's checkpointed step count and of the checkpointed
        ``shuffle_salt`` (from the run's seed), computed on the device by
        every rank alike: resuming is exact, no per-step broadcast and no
        host read, and each seed shuffles its own way.
        """
        world_size = get_world_size()
        if world_size == 1 and not self.split_batch_norm:
            return None
        return shuffle_permutation(self.encoder_k.steps,
                                   batch_size * world_size, self.shuffle_salt)

    @torch.no_grad()
    def _encode_keys(
        self, im_k: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys of the student's and the teacher's momentum encoders under
        one shuffle-BN (MoCo's recipe).

        The images are gathered once and both key encoders run on the same
        shuffled part of the global batch (a frozen teacher is in eval mode,
        so its keys do not depend on the shuffle and it simply shares it);
        all keys come back in one gather, which also gives the global batch
        that the queues and the bank need.

        Returns:
            Tuple[Tensor]: This rank's student keys ``(B, D)`` and teacher
            keys ``(B, D_t)``, then the global batch's (``W * B`` rows), all
            float32, unit norm.
        """
        perm = self.shuffle_permutation(im_k.shape[0])
        im_k = gather_shuffled(im_k, perm)
        k_s = self._check_embedding(self.encoder_k(im_k)[0], teacher=False)
        k_s = F.normalize(k_s.float(), dim=1)
        teacher = self.teacher_encoder_k or nn.Sequential(
            self.teacher.backbone, self.teacher.neck)
        k_t = self._check_embedding(teacher(im_k)[0], teacher=True)
        k_t = F.normalize(k_t.float(), dim=1)
        (k_s, k_t), (all_k_s, all_k_t) = gather_unshuffled([k_s, k_t], perm)
        return k_s, k_t, all_k_s, all_k_t

    @staticmethod
    def contrastive_logits(
            query: torch.Tensor, key: torch.Tensor,
            queue: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MoCo's logits ``l_pos`` ``(N, 1)`` and ``l_neg`` ``(N, L)`` in
        float32, also under AMP.

        Autocast runs matrix products in fp16/bf16 whatever the dtype of
        their inputs, and the head divides by τ afterwards: cosines rounded
        to 3 significant digits (bf16) become logit errors of ~0.02 at
        τ = 0.2. The products are therefore computed with autocast off.
        """
        with torch.autocast(device_type=query.device.type, enabled=False):
            query = query.float()
            l_pos = torch.einsum('nc,nc->n', query,
                                 key.detach().float()).unsqueeze(-1)
            l_neg = query @ queue.detach().float()
        return l_pos, l_neg

    @staticmethod
    def batch_labels(data_samples: Optional[List[DataSample]], num: int,
                     device: torch.device) -> torch.Tensor:
        """The batch's ``(num,)`` long labels on ``device``, -1 for a sample
        without ``gt_label`` (built there, so that a batch mixing labelled
        CUDA samples and unlabelled ones stacks on one device)."""
        if not data_samples:
            return torch.full((num, ), -1, dtype=torch.long, device=device)
        unknown = torch.full((), -1, dtype=torch.long, device=device)
        return torch.stack([
            sample.gt_label[0].to(device=device, dtype=torch.long)
            if 'gt_label' in sample else unknown for sample in data_samples
        ])

    def _host_state(self) -> Tuple[bool, bool]:
        """The one host read of a training step: whether the bank is
        initialised and whether the cached queue assignments are due for a
        full refresh.

        Both (and the bank's record of an update skipped for non-finite
        keys) are packed into one integer, so that a single ``.item()``
        brings them: one synchronisation on CUDA, at the start of the step,
        before any of its kernels is queued.
        """
        bank = self.miner
        packed = (
            self.queue_assign_age.clamp(max=2**40) * 4 +
            bank.nonfinite_updates.clamp(max=1) * 2 + bank.initialized.long())
        value = int(packed)
        if value & 2:
            raise FloatingPointError(
                'PrototypeBank.update: the teacher keys of the last batch '
                'held NaN or inf (a diverged teacher); the bank was not '
                'updated with them. Check the teacher loss, lower the '
                'learning rate or add optim_wrapper.clip_grad, and resume '
                'from the last checkpoint.')
        return bool(value & 1), (value >> 2) >= self.queue_refresh_interval

    def check_global_batch(self, global_batch: int) -> None:
        """Raise a clear error when the queue cannot hold whole batches, or
        split BN cannot cut a process's batch into equal slices (checked
        before training, rather than at the first forward)."""
        if self.queue_len % global_batch != 0:
            raise ValueError(
                f'model.queue_len={self.queue_len} is not a multiple of the '
                f'global batch size {global_batch} (batch per GPU x world '
                'size): the queue is filled one whole global batch at a '
                'time. Change model.queue_len or train_dataloader.batch_size.')
        batch = global_batch // get_world_size()
        for name, module in self.named_modules():
            if isinstance(module, SplitBatchNorm) and \
                    batch % module.num_splits:
                raise ValueError(
                    f'{name} is a SplitBN with num_splits='
                    f'{module.num_splits}, which does not divide the batch '
                    f'per process ({batch}): change norm_cfg.num_splits or '
                    'train_dataloader.batch_size.')

    @torch.no_grad()
    def _dequeue_and_enqueue(
            self,
            student_keys: torch.Tensor,
            teacher_keys: torch.Tensor,
            teacher_assign: torch.Tensor,
            labels: torch.Tensor,
            mining_keys: Optional[torch.Tensor] = None) -> None:
        """Write one global batch into the index-aligned queues.

        All arguments are already gathered from every rank, so each rank
        writes the same values.
        """
        batch_size = student_keys.shape[0]
        self.check_global_batch(batch_size)
        # Slots from the pointer on, computed on the device (no host read).
        slots = (self.queue_ptr + torch.arange(
            batch_size, device=self.queue_ptr.device)) % self.queue_len
        self.queue.index_copy_(1, slots, student_keys.t().to(self.queue))
        self.teacher_queue.index_copy_(1, slots,
                                       teacher_keys.t().to(self.teacher_queue))
        if self.mining_center is not None:
            self.mining_queue.index_copy_(
                1, slots,
                mining_keys.t().to(self.mining_queue))
        self.queue_labels.index_copy_(0, slots, labels.long())
        self.queue_assign.index_copy_(0, slots, teacher_assign.long())
        self.queue_ptr.add_(batch_size).remainder_(self.queue_len)
        self.queue_count.clamp_(max=self.queue_len -
                                batch_size).add_(batch_size)

    @torch.no_grad()
    def refresh_queue_assign(self) -> None:
        """Re-assign every filled teacher-queue slot to the current bank.

        Rank 0's bank is broadcast first (a no-op on one process), so every
        refresh, i.e. every ``queue_refresh_interval`` iterations and after
        every clustering, re-synchronises the bank: whatever a rank's k-means
        or update did, every rank then mines with rank 0's bank, and the cache
        is rebuilt from it. (The update step itself is exact, see
        :meth:`PrototypeBank.update`; this is the safety net, ~1.5 MB per
        refresh at K=3000.)
        """
        broadcast(self.miner.prototypes, src=0)
        assign, _ = self.miner.assign(self._mining_queue().t())
        filled = torch.arange(
            self.queue_len, device=assign.device) < self.queue_count
        self.queue_assign.copy_(torch.where(filled, assign, -1))
        self.queue_assign_age.zero_()

    @torch.no_grad()
    def maybe_refresh_queue_assign(self) -> None:
        """Re-assign the queue when its cached assignments are
        ``queue_refresh_interval`` iterations old."""
        bank_ready, refresh_due = self._host_state()
        if bank_ready and refresh_due:
            self.refresh_queue_assign()

    @torch.no_grad()
    def mine_relations(
        self,
        teacher_keys: torch.Tensor,
        center: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        bank_ready: Optional[bool] = None
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Connection step between this rank's anchors and the queue.

        Anchor ``i`` and slot ``j`` are positive when both are assigned to
        the same prototype (``relation_source='miner'``) or, for the oracle,
        when their true labels agree. With ``miner.max_positives`` only the
        positives most similar to the anchor in the mining space are kept.

        Args:
            teacher_keys (Tensor): ``(N, D_t)`` unit teacher keys (anchors).
            center (Tensor, optional): See :meth:`mining_space`.
            labels (Tensor, optional): ``(N,)`` true labels of the anchors
                (-1 unknown); required by the oracle only.
            bank_ready (bool, optional): Whether the bank is initialised, when
                the caller already knows (saves a host read). Defaults to
                None (read it).

        Returns:
            Tuple[Tensor, Tensor]: The ``(N, L)`` bool mask of positives and
            the ``(N,)`` anchor assignments; ``(None, None)`` before the bank
            is initialised.
        """
        if bank_ready is None:
            bank_ready = self.miner.is_initialized
        if not bank_ready:
            return None, None
        anchors = self.mining_space(teacher_keys, center)
        anchor_assign, _ = self.miner.assign(anchors)
        bank_mask = anchor_assign[:, None] == self.queue_assign[None]
        bank_mask &= (anchor_assign >= 0)[:, None]
        if self.relation_source == 'oracle_labels':
            pos_mask = self.oracle_relations(labels)
            if self.oracle_sample is not None:
                pos_mask = self.sample_oracle_relations(pos_mask, bank_mask)
        else:
            pos_mask = bank_mask
        if self.max_positives is not None:
            pos_mask = self.cap_positives(pos_mask,
                                          anchors @ self._mining_queue())
        return pos_mask, anchor_assign

    def oracle_relations(self, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Analysis only: the ``(N, L)`` mask of queue slots whose true
        label equals the anchor's (``relation_source='oracle_labels'``)."""
        if labels is None or bool((labels < 0).any()):
            raise ValueError(
                "model.relation_source='oracle_labels' takes the student's "
                'positives from the true labels, but this batch has samples '
                'without gt_label: use a labelled training set (or '
                "relation_source='miner').")
        # Unwritten slots carry -1 and so never match a real label.
        return labels[:, None] == self.queue_labels[None]

    def sample_oracle_relations(
            self,
            same_class: torch.Tensor,
            bank_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Analysis only: relations of a set precision and number
        (``model.oracle_sample``), drawn from the label-equality mask.

        Each anchor keeps ``m = round(precision * positives)`` random slots
        of its class and ``positives - m`` random written slots of other
        classes (fewer when the queue holds fewer). The draw is seeded by
        the run's seed, the relation clock ``mining_steps`` and the rank: a
        resumed run draws what an uninterrupted one would, and the global
        random stream (data augmentation) is left untouched.

        With ``wrong='bank'`` the wrong slots are the bank's own mistakes
        (slots of another class that share the anchor's prototype) before
        any other: same precision and number, errors where the teacher
        confuses classes rather than spread over all of them.

        Args:
            same_class (Tensor): ``(N, L)`` label-equality mask from
                :meth:`oracle_relations`.
            bank_mask (Tensor, optional): ``(N, L)`` the bank's relations;
                required with ``wrong='bank'``. Defaults to None.

        Returns:
            Tensor: The ``(N, L)`` bool mask of sampled positives.
        """
        positives = self.oracle_sample['positives']
        num_same = int(round(self.oracle_sample['precision'] * positives))
        other_class = ~same_class & (self.queue_labels >= 0)[None]
        # A host read of the clock: acceptable in this analysis mode only.
        seed = hash((torch.initial_seed(), int(
            self.mining_steps), get_rank())) % (2**63)
        generator = torch.Generator(device=same_class.device)
        generator.manual_seed(seed)
        scores = torch.rand(
            same_class.shape, generator=generator, device=same_class.device)
        wrong_scores = scores
        if self.oracle_sample['wrong'] == 'bank':
            # Scores lie in [0, 1): +1 ranks every bank mistake above every
            # other wrong slot, and the draw stays random within each group.
            wrong_scores = scores + bank_mask.float()
        return (top_k_of_mask(same_class, scores, num_same)
                | top_k_of_mask(other_class, wrong_scores,
                                positives - num_same))

    def cap_positives(self, pos_mask: torch.Tensor,
                      similarity: torch.Tensor) -> torch.Tensor:
        """Keep at most ``max_positives`` positives per anchor, the most
        similar ones.

        Args:
            pos_mask (Tensor): ``(N, L)`` bool mask of positives.
            similarity (Tensor): ``(N, L)`` anchor-slot similarities.

        Returns:
            Tensor: The ``(N, L)`` capped mask (a subset of ``pos_mask``).
        """
        return top_k_of_mask(pos_mask, similarity, self.max_positives)

    def relation_scale(self) -> torch.Tensor:
        """The warm-up factor of the mined positives' weight, in [0, 1]
        (a tensor: no host synchronisation)."""
        if self.relation_warmup_iters == 0:
            return torch.ones((), device=self.mining_steps.device)
        return (self.mining_steps.float() /
                self.relation_warmup_iters).clamp(max=1.0)

    @torch.no_grad()
    def update_bank(self,
                    mining_keys: torch.Tensor,
                    bank_ready: Optional[bool] = None) -> torch.Tensor:
        """Update step on one global batch, identical on every rank.

        Args:
            mining_keys (Tensor): ``(B, D_t)`` all-gathered teacher keys in
                mining space.
            bank_ready (bool, optional): See :meth:`mine_relations`.

        Returns:
            Tensor: ``(B,)`` their assignments to the updated bank (-1
            before the bank is initialised), cached with the queue slots.
        """
        if bank_ready is None:
            bank_ready = self.miner.is_initialized
        if not bank_ready:
            return torch.full((mining_keys.shape[0], ),
                              -1,
                              dtype=torch.long,
                              device=mining_keys.device)
        assign, sim = self.miner.assign(mining_keys)
        self.miner.update(mining_keys, assign, sim)
        self.queue_assign_age.add_(1)
        self.mining_steps.add_(1)
        return self.miner.assign(mining_keys)[0]

    def filled_mining_keys(self) -> torch.Tensor:
        """The ``(queue_count, D_t)`` teacher keys written so far, in mining
        space (what the bank is clustered from)."""
        return self._mining_queue()[:, :int(self.queue_count)].t()

    def loss(self, inputs: List[torch.Tensor], data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """The forward function in training.

        Args:
            inputs (List[Tensor]): The two augmented views.
            data_samples (List[DataSample]): The samples; ``gt_label`` is
                read, when present, for the relation-precision statistic
                only.

        Returns:
            Dict[str, Tensor]: ``loss_teacher``, ``loss_relation`` (and
            ``loss_kd``) plus the logged statistics.
        """
        assert isinstance(inputs, list) and len(inputs) >= 2
        im_q, im_k = inputs[0], inputs[1]
        # The step's only host read, before any of its kernels is queued;
        # everything below stays on the device.
        bank_ready, refresh_due = self._host_state()
        losses = dict()

        # Queries with gradient; an online teacher trains its own MoCo v2.
        q_s = F.normalize(
            nn.Sequential(self.backbone, self.neck)(im_q)[0], dim=1)
        teacher = nn.Sequential(self.teacher.backbone, self.teacher.neck)
        q_t = None
        if not self.teacher_frozen:
            q_t = F.normalize(teacher(im_q)[0], dim=1)
        # Keys of both momentum encoders (one shuffle-BN), this rank's and
        # the global batch's (identical on every rank).
        self.momentum_update()
        k_s, k_t, all_k_s, all_k_t = self._encode_keys(im_k)
        if q_t is not None:
            l_pos, l_neg = self.contrastive_logits(
                q_t, k_t,
                self.teacher_queue.clone().detach())
            losses['loss_teacher'] = self.loss_weights[
                'teacher'] * self.teacher_head.loss(l_pos, l_neg)

        # Relation mining in the teacher's space (connection step).
        labels = self.batch_labels(data_samples, k_t.shape[0], k_t.device)
        center = (all_k_t.mean(0) if self.mining_center is not None else None)
        if bank_ready and refresh_due:
            self.refresh_queue_assign()
        pos_mask, anchor_assign = self.mine_relations(
            k_t, center, labels, bank_ready=bank_ready)
        relation_scale = self.relation_scale()
        # Logits in float32 under AMP too: autocast would run the head's
        # products in fp16/bf16 before the division by τ (see
        # contrastive_logits).
        with torch.autocast(device_type=q_s.device.type, enabled=False):
            losses['loss_relation'] = self.loss_weights[
                'relation'] * self.head.loss(
                    q_s.float(),
                    k_s,
                    self.queue.clone().detach(),
                    pos_mask,
                    mined_scale=relation_scale)
        if self.loss_weights['kd'] > 0:
            if q_t is None:
                with torch.no_grad():
                    q_t = F.normalize(teacher(im_q)[0], dim=1)
            q_kd = q_s
            if self.kd_projection is not None:
                # The student's own map into the teacher's dimension; only
                # loss_kd trains it.
                q_kd = F.normalize(self.kd_projection(q_s), dim=1)
            cos = (q_kd * q_t.detach()).sum(1)
            losses['loss_kd'] = self.loss_weights['kd'] * (2 - 2 * cos).mean()

        losses.update(self._relation_stats(pos_mask, anchor_assign, labels))
        losses['relation_scale'] = relation_scale if pos_mask is not None \
            else relation_scale.new_zeros(())

        # Update step and enqueue, on the global batch, so that the bank and
        # both queues stay identical across ranks.
        with torch.no_grad():
            all_labels = torch.cat(all_gather(labels))
            all_m_t = self.mining_space(all_k_t, center)
            all_assign = self.update_bank(all_m_t, bank_ready=bank_ready)
            self._dequeue_and_enqueue(all_k_s, all_k_t, all_assign, all_labels,
                                      all_m_t)
        return losses

    @torch.no_grad()
    def _relation_stats(self, pos_mask: Optional[torch.Tensor],
                        anchor_assign: Optional[torch.Tensor],
                        labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Statistics of the mined relations (logged, not summed)."""
        zero = labels.new_zeros((), dtype=torch.float)
        # Every key in every log entry (log parsers such as mmpretrain's
        # analyze_logs need a value per entry): zeros before the bank exists;
        # the precision is NaN ("no value") when no labelled pair was mined.
        if pos_mask is None:
            return dict(
                proto_assigned_ratio=zero,
                relation_pos_per_anchor=zero,
                proto_in_use=zero,
                relation_precision=zero + float('nan'))
        stats = dict(
            proto_assigned_ratio=(anchor_assign >= 0).float().mean(),
            relation_pos_per_anchor=pos_mask.sum(1).float().mean(),
            proto_in_use=count_used(self.queue_assign,
                                    self.miner.num_prototypes))
        # Relation precision: share of mined pairs whose true classes agree,
        # counted only where both labels are known.
        known = (labels >= 0)[:, None] & (self.queue_labels >= 0)[None]
        pairs = pos_mask & known
        agree = pairs & (labels[:, None] == self.queue_labels[None])
        # 0 / 0 = NaN without a labelled pair; no host synchronisation.
        stats['relation_precision'] = agree.sum().float() / pairs.sum()
        return stats

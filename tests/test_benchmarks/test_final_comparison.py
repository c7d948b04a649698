# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/final_comparison.sh: the plan, the skipping of finished arms,
and the quality.py command of every arm (with a stand-in for quality.py)."""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'final_comparison.sh')
VARIANTS = ('mocov2', 'rekd', 'rekd_no_relation', 'rekd_kd1',
            'rekd_no_relation_kd1', 'rekd_oracle_kd1', 'rekd_kd4',
            'rekd_no_relation_kd4', 'rekd_oracle_kd4')
DATASETS = ('cifar10', 'fashion-mnist')


def _run(tmp_path, *args, python=sys.executable):
    env = dict(
        os.environ,
        PYTHON=python,
        RESULTS=str(tmp_path / 'results'),
        WORK=str(tmp_path / 'work'))
    return subprocess.run(['bash', SCRIPT, *args],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)


def _result(tmp_path, dataset, seed, variant, records):
    path = tmp_path / 'results' / (f'quality_small4k_{dataset}_seed{seed}_'
                                   f'{variant}.json')
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(dict(records=records)))


def test__plan_order_and_finished_arms_skipped(tmp_path):
    plan = _run(tmp_path, '--dry-run').stdout.split('\n')[:-1]
    # 3 seeds × 9 variants × 2 data sets and 3 reference rows × 2 for seed 0
    # only, each once.
    assert len(plan) == len(set(plan)) == 3 * 9 * 2 + 3 * 2
    assert plan[:4] == [
        'cifar10 0 mocov2', 'fashion-mnist 0 mocov2', 'cifar10 0 rekd',
        'fashion-mnist 0 rekd'
    ]
    assert plan[-1] == 'fashion-mnist 2 rekd_no_relation'
    assert 'cifar10 1 supervised' not in plan
    # After seed 0's four arms, the target comparison's other seeds and KD
    # without relations on CIFAR-10 (where KD led at seed 0), as pairs that
    # run side by side, then the supervised ceiling of both data sets (a
    # short pair) and the other seeds of KD alone on CIFAR-10 (the best arm
    # of seed 0), then the same on Fashion-MNIST.
    assert plan[8:18] == [
        'cifar10 1 mocov2', 'cifar10 1 rekd_kd1', 'cifar10 2 mocov2',
        'cifar10 2 rekd_kd1', 'cifar10 0 rekd_no_relation_kd1',
        'cifar10 0 supervised', 'fashion-mnist 0 supervised',
        'cifar10 1 rekd_no_relation_kd1', 'cifar10 2 rekd_no_relation_kd1',
        'fashion-mnist 1 mocov2'
    ]
    # The target comparison's other seeds come before the ablations; the
    # configs' KD weight of session 24 after the oracle, then the oracle at
    # that weight (session 27), before the arms without KD.
    assert plan.index('fashion-mnist 2 rekd_kd1') < plan.index(
        'cifar10 0 rekd_oracle_kd1') < plan.index('cifar10 1 rekd')
    assert plan.index('fashion-mnist 2 rekd_oracle_kd1') < plan.index(
        'cifar10 0 rekd_kd4') < plan.index('fashion-mnist 2 rekd_kd4') < \
        plan.index('cifar10 0 rekd_no_relation_kd4') < plan.index(
            'fashion-mnist 2 rekd_no_relation_kd4') < plan.index(
                'cifar10 0 rekd_oracle_kd4') < plan.index(
                    'fashion-mnist 2 rekd_oracle_kd4') < plan.index(
                        'cifar10 1 rekd')
    # The comparison with the chosen defaults (KD: MoCo v2, ReKD, ReKD
    # without relations, the oracle; the reference rows) is complete before
    # the other seeds of the arms without KD, which come last.
    later_without_kd = [
        arm for arm in plan
        if arm.split()[2] in ('rekd',
                              'rekd_no_relation') and arm.split()[1] != '0'
    ]
    assert len(later_without_kd) == 8
    assert plan[-8:] == later_without_kd
    # A finished arm's file holds its record; a file with another record
    # (e.g. written by hand) does not make the arm finished.
    _result(tmp_path, 'cifar10', 0, 'mocov2',
            [dict(dataset='cifar10', variant='mocov2')])
    _result(tmp_path, 'fashion-mnist', 0, 'mocov2',
            [dict(dataset='fashion-mnist', variant='rekd')])
    plan = _run(tmp_path, '--dry-run').stdout.split('\n')[:-1]
    assert 'cifar10 0 mocov2' not in plan
    assert plan[0] == 'fashion-mnist 0 mocov2'


def _fake_python(tmp_path):
    """A stand-in for the interpreter: the script's own checks (python -)
    run for real; quality.py is replaced by writing the arm's record. Its
    calls go to calls.txt, its dry runs (the preflight) to preflight.txt."""
    calls = tmp_path / 'calls.txt'
    preflight = tmp_path / 'preflight.txt'
    fake = tmp_path / 'python'
    fake.write_text(
        textwrap.dedent(f'''\
        #!/usr/bin/env bash
        if [ "$1" = - ]; then exec {sys.executable} "$@"; fi
        case " $* " in
          *" --dry-run "*) echo "$@" >> {preflight}; exit 0 ;;
        esac
        echo "$@" >> {calls}
        exec {sys.executable} - "$@" <<'EOF'
        import json, sys
        args = sys.argv[1:]
        get = lambda key: args[args.index(key) + 1]
        record = dict(dataset=get('--datasets'), variant=get('--variants'))
        with open(get('--out'), 'w') as f:
            json.dump(dict(records=[record]), f)
        EOF
        '''))
    fake.chmod(0o755)
    (tmp_path / 'results').mkdir(exist_ok=True)
    return fake, calls, preflight


def test__every_arm_runs_once_with_resume_then_nothing_is_left(tmp_path):
    fake, calls, preflight = _fake_python(tmp_path)
    proc = _run(tmp_path, python=str(fake))
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().split('\n')[:-1]
    assert len(lines) == 60
    for line in lines:
        args = line.split()
        assert args[0] == 'benchmarks/quality.py' and '--resume' in args
        assert args[args.index('--regime') + 1] == 'small4k'
        seed = args[args.index('--seed') + 1]
        assert args[args.index('--work-root') + 1] == \
            f'{tmp_path}/work_seed{seed}'
    runs = {(a.split()[4], a.split()[8], a.split()[6]) for a in lines}
    assert len(runs) == 60
    # One preflight before any arm, over the data sets and variants left.
    checks = preflight.read_text().split('\n')[:-1]
    assert len(checks) == 1
    args = checks[0].split()
    datasets = args[args.index('--datasets') + 1:args.index('--variants')]
    assert datasets == ['cifar10', 'fashion-mnist']
    assert len(set(args) & set(VARIANTS)) == 9
    again = _run(tmp_path, python=str(fake))
    assert again.stdout.strip() == 'every arm is finished'


def test__minutes_starts_only_arms_that_end_in_time(tmp_path):
    fake, calls, _ = _fake_python(tmp_path)
    # 70 minutes hold the reference rows (15, 15, 60) but no pretraining
    # arm (95 and more): those are reported and left for the next call.
    proc = _run(tmp_path, '--minutes', '70', python=str(fake))
    assert proc.returncode == 0, proc.stderr
    started = {(a.split()[4], a.split()[6])
               for a in calls.read_text().split('\n')[:-1]}
    assert started == {(d, v)
                       for d in DATASETS
                       for v in ('untrained', 'pixels', 'supervised')}
    skipped = [line for line in proc.stdout.split('\n') if ' skip ' in line]
    # Every pretraining arm: 9 variants × 3 seeds × 2 data sets.
    assert len(skipped) == 3 * 9 * 2
    assert any('cifar10 seed 0 rekd_kd1 (about 160 min' in line
               for line in skipped)
    plan = _run(tmp_path, '--dry-run').stdout.split('\n')[:-1]
    assert len(plan) == len(skipped) and 'cifar10 0 supervised' not in plan
    bad = _run(tmp_path, '--minutes', '1h', python=str(fake))
    assert bad.returncode == 2 and "got '1h'" in bad.stderr


def test__minutes_expects_what_an_arm_took_on_this_boot(tmp_path):
    fake, calls, _ = _fake_python(tmp_path)
    logs = tmp_path / 'work_logs'
    logs.mkdir()
    with open('/proc/sys/kernel/random/boot_id') as f:
        boot_id = f.read().strip()
    # Measured here: a ReKD arm took 50 min, a MoCo v2 arm 20 (the longest
    # of each kind counts); another boot's 10-minute ReKD arm does not.
    (logs / f'arm_minutes_{boot_id}').write_text('rekd 50\nmocov2 20\n'
                                                 'rekd 40\n')
    (logs / 'arm_minutes_another-boot').write_text('rekd 10\n'
                                                   'rekd_no_relation 10\n')
    # 59 minutes hold 50 min + 15 % (58) and 20 + 15 % (23), not the usual
    # 160 of an arm without relations, nor the 60 of `supervised`. An arm
    # continued from its work dir's checkpoint is not measured.
    (tmp_path / 'work_seed1' / 'cifar10' / 'mocov2').mkdir(parents=True)
    proc = _run(tmp_path, '--minutes', '59', python=str(fake))
    assert proc.returncode == 0, proc.stderr
    started = {(a.split()[4], a.split()[8], a.split()[6])
               for a in calls.read_text().split('\n')[:-1]}
    kinds = {variant for _, _, variant in started}
    assert kinds == {
        'mocov2', 'rekd', 'rekd_kd1', 'rekd_oracle_kd1', 'rekd_kd4',
        'rekd_oracle_kd4', 'untrained', 'pixels'
    }
    assert len(started) == 2 * 3 * 6 + 2 * 2
    assert any('cifar10 seed 0 rekd_no_relation (about 160 min' in line
               for line in proc.stdout.split('\n'))
    assert any('cifar10 seed 0 supervised (about 60 min' in line
               for line in proc.stdout.split('\n'))
    # Every finished arm adds its kind and its minutes rounded up (a
    # stand-in arm takes well under one: 0 or 1).
    measured = (logs / f'arm_minutes_{boot_id}').read_text().split('\n')
    assert measured[:3] == ['rekd 50', 'mocov2 20', 'rekd 40']
    added = [line.split() for line in measured[3:-1]]
    assert sorted(
        kind for kind, _ in added) == sorted(['mocov2'] * 5 + ['rekd'] * 30 +
                                             ['reference'] * 4)
    assert {minutes for _, minutes in added} <= {'0', '1'}


def test__failed_preflight_starts_no_arm(tmp_path):
    # An environment in which quality.py cannot read its configs (session
    # 8: rekd_mm not importable) fails the preflight; no arm is started.
    calls = tmp_path / 'calls.txt'
    fake = tmp_path / 'python'
    fake.write_text(
        textwrap.dedent(f'''\
        #!/usr/bin/env bash
        if [ "$1" = - ]; then exec {sys.executable} "$@"; fi
        echo "$@" >> {calls}
        echo "ImportError: Failed to import rekd_mm" >&2
        exit 1
        '''))
    fake.chmod(0o755)
    proc = _run(tmp_path, python=str(fake))
    assert proc.returncode == 1
    assert 'preflight failed, no arm started' in proc.stderr
    assert 'Failed to import rekd_mm' in proc.stderr
    lines = calls.read_text().split('\n')[:-1]
    assert len(lines) == 1 and '--dry-run' in lines[0]
    assert not (tmp_path / 'results').exists() or not any(
        (tmp_path / 'results').iterdir())

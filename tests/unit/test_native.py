"""A job's own scheduler options (Galaxy's and TPV's native_specification, gpus): read as the
scheduler would, allowed per destination by its admin, and handed to sbatch or qsub."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from galaxy_tasks import native, routing
from galaxy_tasks.errors import ConfigError, SpecError
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.runners.drmaa import DrmaaParams, native_specification
from galaxy_tasks.runners.slurm import SlurmParams, sbatch_options
from galaxy_tasks.spec import parse

JOB_CONF = """
destinations:
  local: local:///
  slurm:
    runner: slurm
    max_gpus: 2
    allow_native: [partition, account, comment, constraint, gres]
  slurm_plain:
    runner: slurm
  sge:
    runner: drmaa
    allow_native: [q, P, l]
"""


@pytest.fixture(scope="module")
def conf() -> routing.Routing:
    return routing.parse(yaml.safe_load(JOB_CONF))


def job(**fields):
    return parse({"tool_id": "bwa", "command": "true", **fields})


def refused(conf: routing.Routing, **fields) -> SpecError:
    with pytest.raises(SpecError) as info:
        conf.route(job(**fields))
    return info.value


@pytest.mark.parametrize("text, style, arguments", [
    ("--partition=gpu --account lab -C avx2 -pbig", "slurm",
     ["--partition=gpu", "--account=lab", "--constraint=avx2", "--partition=big"]),
    ("--exclusive --comment=x", "slurm", ["--exclusive", "--comment=x"]),
    ("-q all.q -l h_vmem=4G,gpu=1 -pe smp 4", "gridengine", ["-q", "all.q", "-l", "h_vmem=4G,gpu=1", "-pe", "smp", "4"]),
])
def test_options_are_read_as_the_scheduler_reads_them(text, style, arguments) -> None:
    assert native.arguments(text, style) == arguments


@pytest.mark.parametrize("text, message", [
    ("--comment=$(reboot)", "option --comment has value '$(reboot)'"),
    ("--comment='a b'", "option --comment has value 'a b'"),
    ("-C 'avx2&intel'", "option --constraint has value 'avx2&intel'"),
    ("--partition=x; rm -rf /", "option --partition has value 'x;'"),
    ("partition=x", "'partition=x' is not an option"),
    ("--partition x y", "'y' is not an option"),
    ("-Z 3", "unknown short option -Z"),
    ("--comment='unclosed", "cannot be read as options"),
    ("--comment=" + "x" * 300, "option --comment has value"),
])
def test_no_shell_text_and_nothing_unreadable_gets_through(text, message) -> None:
    with pytest.raises(native.NativeError) as info:
        native.options(text, "slurm")
    assert message in str(info.value)


def test_a_destination_takes_the_options_its_admin_allows(conf) -> None:
    routed = conf.route(job(destination="slurm", native_specification="--partition=debug --comment=tpv", gpus=2))
    assert routed.name == "slurm"
    assert conf.route(job(destination="sge", native_specification="-q all.q -l h_vmem=2G")).name == "sge"


def test_an_option_not_allowed_is_refused_naming_it_and_what_is(conf) -> None:
    error = refused(conf, destination="slurm", native_specification="--partition=debug --qos=high")
    assert error.field == "native_specification"
    assert "option --qos is not allowed on destination 'slurm'" in str(error)
    assert "allow_native: account, comment, constraint, gres, partition" in str(error)
    error = refused(conf, destination="slurm", native_specification="--mem=4000")
    assert "option --mem is not allowed" in str(error) and "memory_mb" in str(error)
    assert "allow_native: none" in str(refused(conf, destination="slurm_plain", native_specification="--comment=x"))
    assert "option -pe is not allowed on destination 'sge'" in str(
        refused(conf, destination="sge", native_specification="-pe smp 4"))


def test_a_runner_without_scheduler_options_refuses_any(conf) -> None:
    error = refused(conf, destination="local", native_specification="--partition=x")
    assert "destination 'local' takes no native options" in str(error)


def test_gpus_go_only_where_a_destination_gives_them(conf) -> None:
    assert "destination 'local' gives no GPUs" in str(refused(conf, destination="local", gpus=1))
    assert "destination 'slurm_plain' gives no GPUs" in str(refused(conf, destination="slurm_plain", gpus=1))
    error = refused(conf, destination="slurm", gpus=3)
    assert (error.field, str(error).split(": ", 1)[1]) == ("gpus", "asks for 3, more than destination 'slurm' "
                                                                    "allows (2)")


@pytest.mark.parametrize("destination, message", [
    ("{runner: slurm, allow_native: [job-name]}", "a job may not set 'job-name': the slurm runner sets it itself"),
    ("{runner: slurm, allow_native: [time]}", "a job may not set 'time'"),
    ("{runner: slurm, allow_native: [--partition]}", "must be an option's name without dashes"),
    ("{runner: drmaa, allow_native: [o]}", "a job may not set 'o'"),
    ("{runner: local, allow_native: [partition]}", "the local runner takes no scheduler options"),
    ("{runner: local, max_gpus: 1}", "the local runner cannot ask for GPUs"),
    ("{runner: drmaa, max_gpus: 1}", "set params.gpu_resource"),
])
def test_allow_native_and_max_gpus_are_checked_when_the_job_conf_loads(destination, message) -> None:
    text = f"destinations:\n  d: {destination}\n"
    with pytest.raises(ConfigError) as info:
        routing.parse(yaml.safe_load(text))
    assert message in str(info.value)


def test_one_allowed_option_may_be_named_alone() -> None:
    conf = routing.parse(yaml.safe_load("destinations:\n  d: {runner: slurm, allow_native: partition}\n"))
    assert conf.destinations["d"].allow_native == {"partition"}


def launch(tmp_path: Path, **fields) -> Launch:
    return Launch(job_id="j1", job_dir=tmp_path, script=tmp_path / "job.sh", **fields)


def test_sbatch_gets_the_gpus_then_the_destinations_options_then_the_jobs(tmp_path) -> None:
    options = sbatch_options(launch(tmp_path, cores=2, memory_mb=1024, gpus=1,
                                    native_specification="-p debug --comment tpv"),
                             SlurmParams(native_specification="--partition=main", gpu_gres="gpu:a100"))
    assert options[-5:] == ["--mem=1024M", "--gres=gpu:a100:1", "--partition=main", "--partition=debug",
                            "--comment=tpv"]


def test_qsub_gets_the_gpus_and_the_jobs_options_last(tmp_path) -> None:
    text = native_specification(launch(tmp_path, gpus=2, native_specification="-q short.q -P lab"),
                                DrmaaParams(native_specification="-q all.q", gpu_resource="gpu"))
    assert text == "-l gpu=2 -q all.q -q short.q -P lab"

"""Routing: the job_conf YAML, runner URL shorthand, and which destination a job gets."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from galaxy_tasks import routing
from galaxy_tasks.errors import ConfigError, SpecError
from galaxy_tasks.routing import Destination
from galaxy_tasks.spec import parse

REPO = Path(__file__).resolve().parents[2]

JOB_CONF = """
destinations:
  local: local:///
  cluster:
    runner: drmaa
    native_specification: "-q all.q -pe smp 8"
    max_cores: 16
    max_memory_mb: 64000
    max_walltime_s: 86400
    env:
      SGE_CELL: default
  bigmem:
    url: drmaa://-l h_vmem=256G/
    queue: drmaa.big
    max_memory_mb: 512000
  spark:
    runner: mesos
    params:
      refuse_seconds: 2
default: local
rules:
  - tool: "toolshed.g2.bx.psu.edu/repos/*/bwa/*"
    destination: cluster
  - tools: [spades, trinity]
    destination: bigmem
  - user: [carol@example.org]
    destination: spark
  - min_cores: 4
    destination: cluster
  - min_memory_mb: 100000
    destination: bigmem
  - tool: slow_thing
    destination: drmaa://-l h_rt=1:00/
"""


@pytest.fixture(scope="module")
def conf() -> routing.Routing:
    return routing.parse(yaml.safe_load(JOB_CONF))


def job(**fields):
    data = {"tool_id": "cat1", "command": "true"}
    data.update(fields)
    return parse(data)


def bad(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        routing.parse(yaml.safe_load(text))
    return str(info.value)


# -- parsing -----------------------------------------------------------------------------


def test_destinations_parsed(conf):
    cluster = conf.destinations["cluster"]
    assert cluster.runner == "drmaa"
    assert cluster.queue == "drmaa.cluster"
    assert cluster.params.native_specification == "-q all.q -pe smp 8"
    assert cluster.env == {"SGE_CELL": "default"}
    assert (cluster.max_cores, cluster.max_memory_mb, cluster.max_walltime_s) == (16, 64000, 86400)

    bigmem = conf.destinations["bigmem"]
    assert (bigmem.runner, bigmem.queue) == ("drmaa", "drmaa.big")
    assert bigmem.params.native_specification == "-l h_vmem=256G"

    spark = conf.destinations["spark"]
    assert (spark.runner, spark.queue, spark.params.refuse_seconds) == ("mesos", "mesos.spark", 2.0)

    local = conf.destinations["local"]
    assert (local.runner, local.queue, local.params.max_jobs) == ("local", "local", None)
    assert conf.default == "local"


def test_queues_lists_every_destination_queue_once(conf):
    assert conf.queues == sorted({"local", "drmaa.cluster", "drmaa.big", "mesos.spark", "drmaa"})


def test_destination_named_after_its_runner_uses_the_runner_queue():
    conf = routing.parse(yaml.safe_load("destinations:\n  drmaa:\n    runner: drmaa\n"))
    assert conf.destinations["drmaa"].queue == "drmaa"


def test_default_is_the_first_destination_when_not_given():
    conf = routing.parse(yaml.safe_load("destinations:\n  first: local:///\n  second: drmaa:///\n"))
    assert conf.default == "first"
    assert conf.route(job()).name == "first"


def test_default_routing_is_one_local_destination():
    conf = routing.default_routing()
    assert list(conf.destinations) == ["local"] and conf.default == "local"
    assert conf.route(job()).runner == "local"
    with pytest.raises(SpecError) as info:
        conf.route(job(cores=100_000))
    assert info.value.field == "cores"


def test_load_none_is_the_default(tmp_path):
    assert routing.load(None) == routing.default_routing()


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "job_conf.yml"
    path.write_text(JOB_CONF)
    assert routing.load(path).destinations["cluster"].max_cores == 16


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        routing.load(tmp_path / "nope.yml")


def test_load_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("destinations: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yml.*not valid YAML"):
        routing.load(path)


# -- runner URL shorthand ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, runner, params",
    [
        ("local:///", "local", {}),
        ("local://", "local", {}),
        ("drmaa:///", "drmaa", {}),
        ("drmaa://-l h_rt=1:00/", "drmaa", {"native_specification": "-l h_rt=1:00"}),
        ("drmaa://native/-l h_rt=1:00/", "drmaa", {"native_specification": "-l h_rt=1:00"}),
        ("drmaa://native/", "drmaa", {}),
        ("drmaa://-q all.q -pe smp 4 -l h_vmem=2G/", "drmaa", {"native_specification": "-q all.q -pe smp 4 -l h_vmem=2G"}),
        ("drmaa://-P proj/x/", "drmaa", {"native_specification": "-P proj/x"}),
        ("mesos:///", "mesos", {}),
        ("slurm:///", "slurm", {}),
        ("slurm://--partition=debug --qos=high/", "slurm", {"native_specification": "--partition=debug --qos=high"}),
        ("slurm://native/-p debug -t 60/", "slurm", {"native_specification": "-p debug -t 60"}),
        ("slurm://--comment=a/b/", "slurm", {"native_specification": "--comment=a/b"}),
    ],
)
def test_runner_urls(url, runner, params):
    destination = routing.parse_url(url)
    assert destination.runner == runner
    assert destination.queue == runner
    defaults = type(destination.params)()
    assert {k: v for k, v in vars(destination.params).items() if getattr(defaults, k) != v} == params
    assert destination.name == url


def test_runner_url_takes_the_name_given():
    assert routing.parse_url("drmaa://-l h_rt=1:00/", "short").name == "short"


@pytest.mark.parametrize("url", ["pbs:///", "torque://x/", "local", "", "http://x/", "LOCAL:///", "SLURM:///"])
def test_bad_runner_url(url):
    with pytest.raises(ConfigError, match="must start with one of local://, drmaa://, mesos://, slurm://"):
        routing.parse_url(url)


def test_a_slurm_url_with_an_option_the_runner_refuses_is_refused():
    with pytest.raises(ConfigError, match="native_specification: may not set --job-name"):
        routing.parse_url("slurm://-J mine/")


def test_url_in_a_mapping_can_be_refined():
    conf = routing.parse(yaml.safe_load(
        "destinations:\n"
        "  short:\n"
        "    url: drmaa://-l h_rt=1:00/\n"
        "    params: {parallel_environment: smp}\n"
        "    max_cores: 2\n"
    ))
    short = conf.destinations["short"]
    assert short.runner == "drmaa" and short.queue == "drmaa.short"
    assert (short.params.native_specification, short.params.parallel_environment) == ("-l h_rt=1:00", "smp")
    assert short.max_cores == 2


def test_native_specification_key_overrides_the_url():
    conf = routing.parse(yaml.safe_load(
        "destinations:\n  d:\n    url: drmaa://-l a/\n    native_specification: -l b\n"
    ))
    assert conf.destinations["d"].params.native_specification == "-l b"


# -- routing a job -----------------------------------------------------------------------


def test_no_rule_matches_gives_the_default(conf):
    assert conf.route(job()).name == "local"


@pytest.mark.parametrize(
    "tool_id, expected",
    [
        ("toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem", "cluster"),
        ("toolshed.g2.bx.psu.edu/repos/iuc/bwa/0.7", "cluster"),
        ("toolshed.g2.bx.psu.edu/repos/devteam/bowtie2/x", "local"),
        ("spades", "bigmem"),
        ("trinity", "bigmem"),
        ("Trinity", "local"),  # globs are case-sensitive
        ("spades2", "local"),
    ],
)
def test_rules_by_tool(conf, tool_id, expected):
    assert conf.route(job(tool_id=tool_id)).name == expected


def test_rule_by_user(conf):
    assert conf.route(job(user="carol@example.org")).name == "spark"
    assert conf.route(job(user="dave@example.org")).name == "local"
    assert conf.route(job()).name == "local"


def test_rule_by_min_cores(conf):
    assert conf.route(job(cores=3)).name == "local"
    assert conf.route(job(cores=4)).name == "cluster"
    assert conf.route(job(cores=16)).name == "cluster"


def test_rule_by_min_memory(conf):
    assert conf.route(job(memory_mb=99_999)).name == "local"
    assert conf.route(job(memory_mb=100_000)).name == "bigmem"


def test_first_matching_rule_wins(conf):
    # the bwa rule comes before the user rule and the min_cores rule
    spec = job(tool_id="toolshed.g2.bx.psu.edu/repos/x/bwa/y", user="carol@example.org", cores=8)
    assert conf.route(spec).name == "cluster"
    # the user rule comes before min_cores
    assert conf.route(job(user="carol@example.org", cores=8)).name == "spark"


def test_rule_with_several_conditions_needs_all():
    conf = routing.parse(yaml.safe_load(
        "destinations:\n  local: local:///\n  big: drmaa:///\n"
        "rules:\n  - {tool: 'align*', min_cores: 8, destination: big}\n"
    ))
    assert conf.route(job(tool_id="align_x", cores=8)).name == "big"
    assert conf.route(job(tool_id="align_x", cores=7)).name == "local"
    assert conf.route(job(tool_id="other", cores=8)).name == "local"


def test_rule_referencing_a_url_creates_that_destination(conf):
    url = "drmaa://-l h_rt=1:00/"
    assert url in conf.destinations
    chosen = conf.route(job(tool_id="slow_thing"))
    assert chosen.name == url
    assert chosen.runner == "drmaa" and chosen.queue == "drmaa"
    assert chosen.params.native_specification == "-l h_rt=1:00"


def test_default_may_be_a_url():
    conf = routing.parse(yaml.safe_load("destinations:\n  a: local:///\ndefault: drmaa://native/-pe smp 2/\n"))
    chosen = conf.route(job())
    assert chosen.runner == "drmaa" and chosen.params.native_specification == "-pe smp 2"


def test_destination_hint_overrides_rules(conf):
    assert conf.route(job(destination="spark")).name == "spark"
    assert conf.route(job(tool_id="spades", destination="local")).name == "local"


def test_unknown_destination_hint_is_refused(conf):
    with pytest.raises(SpecError) as info:
        conf.route(job(destination="gpu"))
    assert info.value.field == "destination"
    assert "gpu" in info.value.message and "cluster" in info.value.message


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"destination": "cluster", "cores": 17}, "cores"),
        ({"destination": "cluster", "memory_mb": 64001}, "memory_mb"),
        ({"destination": "cluster", "walltime_s": 86401}, "walltime_s"),
        ({"cores": 32}, "cores"),  # routed to cluster by min_cores, which allows 16
        ({"tool_id": "spades", "memory_mb": 600_000}, "memory_mb"),
    ],
)
def test_too_big_for_destination(conf, fields, field):
    with pytest.raises(SpecError) as info:
        conf.route(job(**fields))
    assert info.value.field == field
    assert "more than destination" in info.value.message


def test_exactly_at_the_limit_is_accepted(conf):
    assert conf.route(job(destination="cluster", cores=16, memory_mb=64000, walltime_s=86400)).name == "cluster"


def test_refuse_reason_is_none_without_limits():
    unlimited = Destination("d", "local", "local")
    assert unlimited.refuse_reason(job(cores=10_000, memory_mb=10**9)) is None


# -- bad configurations: the message names the key --------------------------------------


@pytest.mark.parametrize(
    "text, named",
    [
        ("destinations: {a: local:///}\nrulez: []\n", "unknown key 'rulez'"),
        ("destinations: {a: {runner: local, cpus: 4}}\n", "destinations.a: unknown key 'cpus'"),
        ("destinations: {a: {runner: pbs}}\n", "destinations.a.runner: runner must be one of local, drmaa, mesos"),
        ("destinations: {a: {queue: q}}\n", "destinations.a.runner: runner must be one of"),
        ("destinations: {a: {runner: local, max_cores: 0}}\n", "destinations.a.max_cores"),
        ("destinations: {a: {runner: local, params: {kill_grace_s: abc}}}\n", "destinations.a.params.kill_grace_s"),
        ("destinations: {a: {runner: local, params: {kill_grace_s: -5}}}\n",
         "destinations.a.params.kill_grace_s: must be at least 0"),
        ("destinations: {a: {runner: mesos, params: {on_agent_lost: maybe}}}\n",
         "destinations.a.params.on_agent_lost: must be one of requeue, fail"),
        ("destinations: {a: {runner: drmaa, params: {submit_retries: 1.5}}}\n",
         "destinations.a.params.submit_retries: must be a whole number"),
        ("destinations: {a: {runner: local, max_cores: -3}}\n", "destinations.a.max_cores"),
        ("destinations: {a: {runner: local, max_memory_mb: 1.5}}\n", "destinations.a.max_memory_mb"),
        ("destinations: {a: {runner: local, max_walltime_s: true}}\n", "destinations.a.max_walltime_s"),
        ("destinations: {a: {runner: local, max_cores: '4'}}\n", "destinations.a.max_cores"),
        ("destinations: {a: {runner: local, params: [1]}}\n", "destinations.a.params"),
        ("destinations: {a: {runner: local, env: [X]}}\n", "destinations.a.env"),
        ("destinations: {a: {runner: local, env: {X: 1}}}\n", "destinations.a.env"),
        ("destinations: {a: {runner: local, params: {max_jobs: 0}}}\n", "destinations.a.params.max_jobs"),
        ("destinations: {a: {runner: local, params: {max_jobs: '4'}}}\n", "destinations.a.params.max_jobs"),
        ("destinations: {a: {runner: drmaa, params: {max_jobs: 4}}}\n",
         "destinations.a.params.max_jobs: unknown param of this runner"),
        ("destinations: {a: 3}\n", "destinations.a: must be a runner URL or a mapping"),
        ("destinations: {a: local:///}\nrules: [{tool: x, destination: gpu}]\n",
         "rules[0].destination: unknown destination 'gpu'"),
        ("destinations: {a: local:///}\nrules: [{tool: x, destination: a}, {destination: b}]\n",
         "rules[1].destination: unknown destination 'b'"),
        ("destinations: {a: local:///}\nrules: [{tool: x}]\n", "rules[0]: must be a mapping with a 'destination'"),
        ("destinations: {a: local:///}\nrules: [{tool: x, destination: a, cpu: 2}]\n", "rules[0]: unknown key 'cpu'"),
        ("destinations: {a: local:///}\nrules: [{destination: a, min_cores: 0}]\n", "rules[0].min_cores"),
        ("destinations: {a: local:///}\nrules: [{destination: a, min_memory_mb: x}]\n", "rules[0].min_memory_mb"),
        ("destinations: {a: local:///}\nrules: [{destination: a, tool: [1]}]\n", "rules[0].tool"),
        ("destinations: {a: local:///}\nrules: [{destination: a, users: {x: 1}}]\n", "rules[0].user"),
        ("destinations: {a: local:///}\nrules: [{destination: 3}]\n", "rules[0].destination"),
        ("destinations: {a: local:///}\ndefault: b\n", "default: unknown destination 'b'"),
        ("destinations: {}\n", "job_conf: destinations: must not be empty, not {}"),
        ("destinations: [local:///]\n", "job_conf: destinations: must be a mapping, not ['local:///']"),
        ("rules: []\n", "job_conf: missing key 'destinations'"),
        ("- local:///\n", "job_conf: must be a mapping, not ['local:///']"),
    ],
)
def test_bad_config_names_the_key(text, named):
    assert named in bad(text)


@pytest.mark.parametrize(
    "text",
    [
        "destinations: {a: 'pbs:///'}\n",
        "destinations: {a: {url: 'torque:///'}}\n",
    ],
)
def test_bad_runner_url_in_config_names_the_destination(text):
    assert "destinations.a" in bad(text)


def test_bad_destination_env_name_is_refused():
    assert "destinations.a.env" in bad("destinations: {a: {runner: local, env: {'BAD NAME': x}}}\n")


# -- shipped examples --------------------------------------------------------------------


def test_example_job_conf_parses():
    conf = routing.load(REPO / "examples" / "job_conf.yml")
    assert conf.default in conf.destinations
    for rule in conf.rules:
        assert rule.destination in conf.destinations


# -- errors name the file and the line ---------------------------------------------------


def test_a_bad_param_names_its_file_and_line(tmp_path):
    path = tmp_path / "job_conf.yml"
    path.write_text("destinations:\n  local:\n    runner: local\n    params:\n      kill_grace_s: abc\n")
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value).startswith(f"{path}:5: destinations.local.params.kill_grace_s: must be a number")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "job_conf.yml"
    path.write_text("destinations:\n  a: local:///\n  b: drmaa:///\n  a: drmaa:///\n")
    with pytest.raises(ConfigError, match=r"job_conf.yml: line 4: key 'a' is given twice \(first on line 2\)"):
        routing.load(path)


def test_an_unknown_key_names_its_line(tmp_path):
    path = tmp_path / "job_conf.yml"
    path.write_text("destinations:\n  a:\n    runner: local\n    max_core: 4\n")
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value) == f"{path}:4: destinations.a: unknown key 'max_core'"


@pytest.mark.parametrize(
    "text, named",
    [
        ("destinations: {a: {runner: local, queue: galaxy_tasks}}\n", "destinations.a: queue 'galaxy_tasks' is one "
                                                                      "of the steps' queues"),
        ("destinations: {a: {runner: local, queue: galaxy_tasks.ends}}\n", "is one of the steps' queues"),
        ("destinations: {a: {runner: local, queue: celery}}\n", "destinations.a: queue 'celery' is one of Celery's"),
        ("destinations: {a: local:///, b: {runner: local, queue: local@node1}}\n",
         "destinations.b: queue 'local@node1' has '@'"),
        ("destinations: {a: local:///, b: {runner: drmaa, queue: local}}\n",
         "destinations.b: queue 'local' is also destination 'a''s"),
    ],
)
def test_a_destination_queue_that_is_not_its_own_is_refused_at_load(text, named):
    """A local destination on the steps' queue, on `celery`, on another's host queue, or two
    destinations on one queue: each would have workers take messages that are not theirs."""
    with pytest.raises(ConfigError) as caught:
        routing.parse(yaml.safe_load(text))
    assert named in str(caught.value)


def test_the_steps_queue_refused_is_the_configured_one():
    text = "destinations: {a: {runner: local, queue: steps}}\n"
    routing.parse(yaml.safe_load(text))
    with pytest.raises(ConfigError, match="steps' queues"):
        routing.parse(yaml.safe_load(text), steps_queues=("steps", "ends"))


NESTED = """\
destinations:
  local: local:///
  big:
    runner: slurm
    params:
      partition: long
      command_timeout_s: {timeout}
    resubmit:
      - condition: walltime_reached
        destination: local
      - condition: memory_limit_reached
        delay: {delay}
    limits:
      - type: walltime
        value: {walltime}
rules:
  - tool: bwa
    destination: big
  - destinations: [local, big]
    min_cores: {cores}
"""
GOOD = {"timeout": 5, "delay": "attempt * 60", "walltime": "'24:00:00'", "cores": 4}


@pytest.mark.parametrize("change, named", [
    ({"timeout": "soon"}, ":7: destinations.big.params.command_timeout_s: must be a number, not 'soon'"),
    ({"delay": "[60]"}, ":12: destinations.big.resubmit[1].delay: must be seconds or an expression over attempt, "
                        "not [60]"),
    ({"delay": "attempt *"}, ":12: destinations.big.resubmit[1].delay: 'attempt *' does not parse"),
    ({"walltime": "-1"}, ":15: destinations.big.limits[0].value: must be a duration"),
    ({"cores": "'4'"}, ":20: rules[1].min_cores: must be a whole number of at least 1, not '4'"),
])
def test_a_nested_error_names_its_line_and_key_path(tmp_path, change, named):
    path = tmp_path / "job_conf.yml"
    path.write_text(NESTED.format(**{**GOOD, **change}))
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value).startswith(f"{path}{named}"), str(info.value)


def test_the_nested_example_itself_loads(tmp_path):
    path = tmp_path / "job_conf.yml"
    path.write_text(NESTED.format(**GOOD))
    big = routing.load(path).destinations["big"]
    assert (big.params.command_timeout_s, big.policy.walltime_s) == (5, 86400)
    assert [r.delay.text if r.delay else None for r in big.policy.resubmit] == [None, "attempt * 60"]


def test_of_several_problems_the_first_in_the_file_is_named(tmp_path):
    """The model checks `destinations` before `limits`; the admin reads the file from the top."""
    path = tmp_path / "job_conf.yml"
    path.write_text("limits:\n  - type: walltime\n    value: 10\n    per: user\n"
                    "destinations:\n  a:\n    runner: local\n    max_cores: 0\n")
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value) == f"{path}:4: limits[0]: unknown key 'per'"


@pytest.mark.parametrize("where, named", [
    ("    url: slurm://-J x/\n", ":3: destinations.a.url.native_specification: may not set --job-name"),
    ("    runner: slurm\n    native_specification: -J x\n", ":4: destinations.a.native_specification: may not set"),
    ("    runner: slurm\n    params:\n      native_specification: -J x\n",
     ":5: destinations.a.params.native_specification: may not set"),
])
def test_a_native_specification_is_checked_where_it_is_written(tmp_path, where, named):
    """The URL's text, the destination's key and the param are one param of the runner's."""
    path = tmp_path / "job_conf.yml"
    path.write_text("destinations:\n  a:\n" + where)
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value).startswith(f"{path}{named}"), str(info.value)

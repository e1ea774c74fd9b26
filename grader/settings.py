"""Every knob of the grader in ONE place: its default, a one-line description, and where a user sets it.

The CLI (grader/cli.py) builds one `Settings` per batch: command-line options first, then the few
environment variables below (for Gradescope's run_autograder and unusual installations), then the
defaults declared here. It hands the judge that one object (`--settings JSON` on the judge's command
line), and the judge hands it to its WorkerProcess. No other file declares a default or reads one of
these environment variables (tests/test_grader_settings.py checks that, `--help` and
grader/README.md's option table against this file).

To change a default (say the per-call timeout): change it here, and the README's option table.

Standard library only: the judge imports this before torch, and Python 3.9 must run it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace


def knob(default, help, *, flag=None, metavar=None, env=None, type=None, shown=None):
    """A setting: `help` is its one-line description; `flag` its command-line option, `env` its
    environment variable (either, both or neither: neither means the CLI decides it); `shown` the
    default as --help and the README state it when it is computed (None: the default itself)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "env": env,
                                            "type": type or _kind_of(default),
                                            "shown": shown})


def _kind_of(value):
    return type(value) if value is not None else str


@dataclass(frozen=True)
class Settings:
    # --- what to grade and where the outputs go ---
    out: str = knob("grading", "output folder", flag="--out", metavar="DIR")
    jobs: int = knob(None, "submissions graded in parallel", flag="--jobs", metavar="N", type=int,
                     shown="half the CPU cores")
    # --- limits on one submission ---
    timeout: float = knob(60.0, "seconds allowed for every single call into student code (the import, each check's call)",
                          flag="--timeout", metavar="S")
    budget: float = knob(None, "seconds for all calls of one submission together", flag="--budget", metavar="S",
                         type=float, shown="max(4 x timeout, 180)")
    memory_mb: int = knob(3072, "data memory (RLIMIT_DATA) of the student process in MB, 0 for none (Linux/macOS)",
                          flag="--memory-mb", metavar="MB")
    judge_memory_mb: int = knob(4096, "data memory (RLIMIT_DATA) of each judge process in MB, 0 for none",
                                env="GRADER_JUDGE_MEMORY_MB")
    scratch_mb: int = knob(512, "each submission's temp-space quota in MB (tmpfs as root, else a monitor)",
                           env="GRADER_SCRATCH_MB")
    # --- containment (grader/README.md, trust model) ---
    no_landlock: bool = knob(False, "1: do not apply Landlock in the worker (an installation needing a path it forbids)",
                             env="GRADER_NO_LANDLOCK")
    no_user: bool = knob(False, "1: never run workers as their own unprivileged uid, even as root",
                         env="GRADER_NO_USER")
    no_namespaces: bool = knob(False, "1: do not put workers into their own user/PID/mount namespaces (seccomp then fences them alone)",
                               env="GRADER_NO_NAMESPACES")
    worker_uid_base: int = knob(None, "first uid of the workers' uids when running as root", env="GRADER_WORKER_UID_BASE",
                                type=int, shown="the uid of account e6grader, else 1879048192")
    contain: str = knob("none", "'user' when workers run as their own uid: decided once per batch by the CLI's probe")
    # --- other modes ---
    similarity_threshold: float = knob(0.5, "--similarity: pairs above this score go into similarity.csv",
                                       flag="--similarity-threshold", metavar="X")
    no_warm_judges: bool = knob(False, "1: start every judge afresh instead of forking it from a server that imported "
                                       "torch once per batch (Linux batches; grader/judge_server.py)",
                                env="GRADER_NO_WARM_JUDGES")
    pytest_verbose: bool = knob(False, "the judge runs pytest verbosely (debugging checks: its log shows each check)")

    # ------------------------------------------------------------------------------------------
    def resolved(self, cpu_count=None):
        """The computed defaults filled in (jobs, budget): what the judges are given."""
        jobs = self.jobs if self.jobs is not None else max(1, (cpu_count or os.cpu_count() or 2) // 2)
        budget = self.budget if self.budget is not None else max(4 * self.timeout, 180.0)
        return replace(self, jobs=max(1, jobs), budget=budget)

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        return cls(**{k: _convert(known[k], v) for k, v in data.items()})

    @classmethod
    def from_environment(cls, environ=None, **given):
        """Settings from `given` (e.g. the command line's values; None means not given), then the
        environment variables, then the defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            if given.get(f.name) is not None:
                values[f.name] = _convert(f, given[f.name])
            elif f.metadata["env"] and environ.get(f.metadata["env"], "") != "":
                values[f.name] = _from_env(f, environ[f.metadata["env"]])
        return cls(**values)


def _convert(f, value):
    if value is None:
        return None
    kind = f.metadata["type"]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{f.name}: expected true or false, got {value!r}")
        return value
    return kind(value)


def _from_env(f, text):
    name = f.metadata["env"]
    if f.metadata["type"] is bool:
        return text.strip() == "1"
    try:
        return f.metadata["type"](text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a number") from None


def knobs():
    """The fields of Settings, each with its metadata: for --help, the README table and the tests."""
    return fields(Settings)


def default_text(f):
    """The default as --help and grader/README.md state it."""
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if f.metadata["type"] is bool:
        return "off" if f.default is False else "on"
    d = f.default
    return f"{d:g}" if isinstance(d, float) else str(d)


def add_options(parser):
    """One argparse option per knob with a command-line flag; help and default from this file.
    Their argparse default is None (not given), so the environment and then the default apply."""
    for f in knobs():
        flag = f.metadata["flag"]
        if flag:
            parser.add_argument(flag, dest=f.name, type=f.metadata["type"], default=None, metavar=f.metadata["metavar"],
                                help=f"{f.metadata['help']} (default: {default_text(f)})")


def from_args(args, environ=None):
    """The batch's Settings from parsed command-line options (add_options) and the environment."""
    given = {f.name: getattr(args, f.name, None) for f in knobs() if f.metadata["flag"]}
    return Settings.from_environment(environ, **given)


def markdown_table():
    """The option table of grader/README.md (tests/test_grader_settings.py checks the README holds it)."""
    rows = ["| Setting | Command line | Environment | Default | What |", "|---|---|---|---|---|"]
    for f in knobs():
        m = f.metadata
        flag = f"`{m['flag']} {m['metavar']}`" if m["flag"] else ""
        env = f"`{m['env']}`" if m["env"] else ""
        if not flag and not env:
            flag = "(set by the CLI)" if f.name == "contain" else "(judge's `--settings` only)"
        rows.append(f"| `{f.name}` | {flag} | {env} | {default_text(f)} | {m['help']} |")
    return "\n".join(rows)


DEFAULTS = Settings()

if __name__ == "__main__":  # python -m grader.settings: the README's option table
    print(markdown_table())

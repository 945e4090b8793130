"""The sweep spec of ``python -m sim sweep``: parsing, validation and job expansion.

A spec is TOML (``.toml``) or JSON (anything else) with an optional
``[sweep]`` table and a list of ``[[jobs]]`` entries::

    [sweep]
    name = "default"
    timeout = 1800                  # seconds a job may take (default 3600)

    [[jobs]]
    name = "fuzz"                   # optional: the entry's name in job ids
    campaign = "fuzz"               # fuzz | races | soak | run | replay
    backends = ["verilator"]        # or backend = "verilator"
    seeds = ["1..40"]               # ints and inclusive ranges "A..B"
    walks = 25000                   # the campaign's own options (below)
    faults = true
    params = {walkers = [1, 2]}     # the unit's parameter grid: every combination

Each entry expands to backends x parameter sets x seeds jobs (``replay``:
x scenario files instead of seeds).  A job is one ``python -m sim
CAMPAIGN ...`` command; :meth:`Job.argv` gives it with its outputs in a
directory of the job's own.  Every error is a :class:`SpecError` of one line
naming the entry and the key.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SpecError", "Job", "Spec", "load_spec", "parse_spec", "CAMPAIGNS", "UNIT_PARAMS"]


class SpecError(ValueError):
    """A bad sweep spec: one line naming where."""


# the unit's parameters a grid may name -> (type, the campaign flag)
# (from the unit's constructor, as the campaigns' own options are: sim.unit_params)
def _unit_params() -> dict:
    from sim import unit_params
    from sim.options import SIM_FIXED
    return {q.name: (q.kind, q.option) for q in unit_params.parameters(*unit_params.UNIT)
            if q.name not in SIM_FIXED}


UNIT_PARAMS = _unit_params()

_INT, _POS, _BOOL, _FRAC, _STR = "int", "positive", "bool", "fraction", "str"

# campaign -> (backends it runs on, seeded, {option: (kind, default, flag)})
CAMPAIGNS: dict[str, tuple[tuple[str, ...], bool, dict]] = {
    "fuzz": (("rtl", "verilator"), True, {
        "walks": (_POS, 1000, "--walks"),
        "faults": (_BOOL, False, "--faults"),
        "cases_per_round": (_POS, 12, "--cases-per-round"),
        "nested": (_BOOL, False, "--nested"),
    }),
    "races": (("rtl", "verilator"), False, {
        "max_offset": (_POS, 72, "--max-offset"),
        "step": (_POS, 1, "--step"),
        "ad": (_BOOL, True, "--no-ad"),
        "nested": (_BOOL, False, "--nested"),
    }),
    "soak": (("rtl", "verilator"), True, {
        "translations": (_POS, 1_000_000, "--translations"),
    }),
    "run": (("model", "rtl", "verilator"), True, {
        # always passed: the model's own default is guest-os, the RTL's stress
        "workload": (_STR, "stress", "--workload"),
        "accesses": (_POS, 4000, "--accesses"),
        "guest_pages": (_POS, 256, "--guest-pages"),
        "host_frames": (_POS, 96, "--host-frames"),
        "hot_pages": (_POS, 24, "--hot-pages"),
        "locality": (_FRAC, 0.8, "--locality"),
        "sequential": (_FRAC, 0.15, "--sequential"),
        "race_rate": (_FRAC, 0.02, "--race-rate"),
        "ad": (_BOOL, True, "--no-ad"),
    }),
    "replay": (("model", "rtl", "verilator"), False, {
        "dir": (_STR, None, None),
        "glob": (_STR, "*.json", None),
    }),
}
# what a job is expected to cost, in seconds on one core (measured, for ordering and the ETA)
_RATE = {("fuzz", "verilator"): 1100, ("fuzz", "rtl"): 40, ("soak", "verilator"): 8000,
         ("soak", "rtl"): 60, ("run", "verilator"): 6000, ("run", "rtl"): 60, ("run", "model"): 3000}
_NESTED_RATE = {("fuzz", "rtl"): 8}        # fuzz --nested: walks per second on the nested unit
_SWEEP_KEYS = {"name", "timeout", "description"}
_ENTRY_KEYS = {"name", "campaign", "backend", "backends", "seeds", "params", "timeout"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Job:
    """One campaign slice: ``python -m sim CAMPAIGN`` with its seed, backend and unit."""
    id: str
    entry: str                    # the spec entry's name
    campaign: str
    backend: str
    seed: int | None
    params: dict                  # the unit's parameters (only those the spec names)
    options: dict                 # the campaign's options (every one, defaults filled in)
    timeout: float
    scenario: str | None = None   # replay: the scenario file

    @property
    def weight(self) -> float:
        """Expected seconds on one core: the longest jobs go first; the ETA."""
        o = self.options
        n = {"fuzz": o.get("walks"), "soak": o.get("translations"),
             "run": o.get("accesses")}.get(self.campaign)
        if n is not None and o.get("nested"):
            return 2.0 + n / _NESTED_RATE.get((self.campaign, self.backend), 100)
        if n is not None:
            return 2.0 + n / _RATE.get((self.campaign, self.backend), 1000)
        if self.campaign == "races" and o.get("nested"):
            # 10 operations x 3 accesses x cold/warm, about half a second a race on pysim
            return 2.0 + 60 * 0.5 * len(range(0, o["max_offset"], o["step"]))
        if self.campaign == "races":
            return (2.0 if self.backend == "verilator" else 100.0) * o["max_offset"] / 72 / o["step"]
        return 3.0

    @property
    def walks(self) -> int:
        """Translations the job is expected to check (for throughput before it ends)."""
        o = self.options
        return int({"fuzz": o.get("walks"), "soak": o.get("translations"),
                    "run": o.get("accesses", 0) * 1.25}.get(self.campaign) or 0)

    def unit_flags(self) -> list[str]:
        flags = []
        for name, value in self.params.items():
            kind, flag = UNIT_PARAMS[name]
            if kind is bool:
                flags.append(flag if value else flag.replace("--", "--no-", 1))
            else:
                flags += [flag, str(value)]
        return flags

    def command(self) -> list[str]:
        """The campaign's arguments (after ``python -m sim``) that run this job alone."""
        c, o = self.campaign, self.options
        if c == "replay":
            return ["replay", self.scenario, "--backend", self.backend, *self.unit_flags()]
        args = [c, "--backend", self.backend]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        _, _, schema = CAMPAIGNS[c]
        for name, (kind, default, flag) in schema.items():
            value = o[name]
            if kind == _BOOL:
                # every bool flag either turns a default-off option on or a default-on one off
                if value != default:
                    args.append(flag)
            elif kind == _STR:
                if flag and value is not None:
                    args += [flag, value]
            elif value != default or (c == "races" and o.get("nested") and name in ("max_offset", "step")):
                # (races --nested has its own defaults for these: the job's are always passed)
                args += [flag, str(value)]
        return args + self.unit_flags()

    def argv(self, out: Path) -> list[str]:
        """The command as a job runs it: quiet, its outputs under ``out``, the reliability
        report left alone (the sweep writes it from every job)."""
        args = self.command()
        c = self.campaign
        if c == "fuzz":
            return args + ["--quiet", "--no-reliability", "--out", str(out)]
        if c == "races":
            return args + ["--quiet", "--no-reliability", "--out", str(out / "races.json")]
        if c == "soak":
            return args + ["--quiet", "--no-reliability", "--out", str(out / "soak.json")]
        if c == "run":
            return args + ["--quiet", "--summary", str(out / "summary.json")]
        return args

    def describe(self) -> dict:
        return {"id": self.id, "entry": self.entry, "campaign": self.campaign, "backend": self.backend,
                "seed": self.seed, "params": dict(self.params), "options": dict(self.options),
                "scenario": self.scenario, "timeout": self.timeout}


@dataclass
class Spec:
    name: str
    path: str
    jobs: list[Job] = field(default_factory=list)
    description: str = ""

    def unit_sets(self, backend: str = "verilator") -> list[dict]:
        """The distinct unit parameter sets the jobs on ``backend`` use (each built once)."""
        seen: list[dict] = []
        for j in self.jobs:
            if j.backend == backend and j.params not in seen:
                seen.append(dict(j.params))
        return seen


# -- parsing ------------------------------------------------------------------------------------

def load_spec(path: str | Path, timeout: float | None = None) -> Spec:
    """Read and validate the spec at ``path`` (TOML by suffix ``.toml``, else JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {str(e).splitlines()[0]}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_spec(data, str(path), base=p.parent, timeout=timeout)


def parse_spec(data, path: str = "<spec>", base: Path = Path("."), timeout: float | None = None) -> Spec:
    """Validate ``data`` (the decoded spec) and expand its jobs; ``timeout`` overrides the spec's."""
    def err(where: str, msg: str):
        raise SpecError(f"{path}: {where}{': ' if where else ''}{msg}")

    if not isinstance(data, dict):
        err("", "a spec is a table with a 'jobs' list")
    unknown = set(data) - {"sweep", "jobs"}
    if unknown:
        err("", f"unknown key {sorted(unknown)[0]!r} (a spec has [sweep] and [[jobs]])")
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict):
        err("sweep", "must be a table")
    for k in sorted(set(sweep) - _SWEEP_KEYS):
        err(f"sweep.{k}", f"unknown key (known: {', '.join(sorted(_SWEEP_KEYS))})")
    name = sweep.get("name", Path(path).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        err("sweep.name", f"{name!r} is not a name (letters, digits, '_', '-', '.')")
    default_timeout = _timeout(sweep.get("timeout", 3600), "sweep.timeout", err)
    if timeout is not None:
        default_timeout = timeout
    entries = data.get("jobs")
    if not isinstance(entries, list) or not entries:
        err("jobs", "missing or empty: a spec names at least one job ([[jobs]] in TOML)")
    spec = Spec(name=name, path=path, description=str(sweep.get("description", "")))
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"jobs[{i}]"
        if not isinstance(entry, dict):
            err(where, "must be a table")
        campaign = entry.get("campaign")
        if campaign not in CAMPAIGNS:
            err(f"{where}.campaign", f"{campaign!r} is not one of {', '.join(CAMPAIGNS)}")
        backends_ok, seeded, schema = CAMPAIGNS[campaign]
        for k in sorted(set(entry) - _ENTRY_KEYS - set(schema)):
            err(f"{where}.{k}", f"unknown key for {campaign} (known: "
                                f"{', '.join(sorted(_ENTRY_KEYS | set(schema)))})")
        ename = entry.get("name", f"{campaign}{i}")
        if not isinstance(ename, str) or not _NAME.match(ename):
            err(f"{where}.name", f"{ename!r} is not a name (letters, digits, '_', '-', '.')")
        if ename in names:
            err(f"{where}.name", f"{ename!r} names two entries")
        names.add(ename)
        where = f"jobs[{i}] ({ename})"
        backends = _backends(entry, backends_ok, where, err)
        seeds = _seeds(entry, seeded, where, err)
        options = {k: _option(entry.get(k, default), kind, f"{where}.{k}", err)
                   for k, (kind, default, _) in schema.items()}
        grid = _grid(entry.get("params", {}), f"{where}.params", err)
        t = _timeout(entry.get("timeout", default_timeout), f"{where}.timeout", err) \
            if timeout is None else timeout
        scenarios: list[str | None] = [None]
        if campaign == "replay":
            if options["dir"] is None:
                err(f"{where}.dir", "replay needs dir = the directory of scenarios")
            d = (base / options["dir"]) if not Path(options["dir"]).is_absolute() else Path(options["dir"])
            if not d.is_dir():
                err(f"{where}.dir", f"{options['dir']!r} is not a directory")
            scenarios = [str(f.resolve()) for f in sorted(d.glob(options["glob"])) if f.is_file()]
            if not scenarios:
                err(f"{where}.dir", f"no {options['glob']} in {options['dir']!r}")
        seen_model: set = set()
        for backend, params, seed, scenario in itertools.product(backends, grid, seeds, scenarios):
            if backend == "model":
                # the golden model has no unit: the parameter grid means nothing there (the
                # campaign would refuse the options), so it runs once per seed and scenario
                if (seed, scenario) in seen_model:
                    continue
                seen_model.add((seed, scenario))
                params = {}
            parts = [ename, backend]
            if len(grid) > 1 and params:
                parts += [(name.replace("_", "") + str(v)) if not isinstance(v, bool)
                          else name.replace("_", "") if v else "no" + name.replace("_", "")
                          for name, v in params.items()]
            if seed is not None:
                parts.append(f"s{seed}")
            if scenario is not None:
                parts.append(Path(scenario).stem)
            spec.jobs.append(Job(id="-".join(parts), entry=ename, campaign=campaign, backend=backend,
                                 seed=seed, params=params, options=options, timeout=t,
                                 scenario=scenario))
    ids = [j.id for j in spec.jobs]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        err("jobs", f"two jobs would be named {dup!r} (give the entries distinct names)")
    _check_units(spec, path)
    return spec


def _timeout(v, where, err) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        err(where, f"must be a positive number of seconds, not {v!r}")
    return float(v)


def _backends(entry, allowed, where, err) -> list[str]:
    if "backend" in entry and "backends" in entry:
        err(where, "give backend or backends, not both")
    v = entry.get("backends", entry.get("backend", "verilator" if "verilator" in allowed else allowed[0]))
    values = [v] if isinstance(v, str) else v
    if not isinstance(values, list) or not values:
        err(f"{where}.backends", f"must be a backend name or a list of them, not {v!r}")
    for b in values:
        if b not in allowed:
            err(f"{where}.backends", f"{b!r}: {entry['campaign']} runs on {' or '.join(allowed)}")
    if len(set(values)) != len(values):
        err(f"{where}.backends", "names a backend twice")
    return list(values)


def _seeds(entry, seeded, where, err) -> list[int | None]:
    if not seeded:
        if "seeds" in entry:
            err(f"{where}.seeds", f"{entry['campaign']} takes no seed (it is exhaustive)")
        return [None]
    v = entry.get("seeds", [1])
    values = v if isinstance(v, list) else [v]
    out: list[int] = []
    for s in values:
        if isinstance(s, int) and not isinstance(s, bool):
            out.append(s)
            continue
        m = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", s) if isinstance(s, str) else None
        if not m or int(m[1]) > int(m[2]):
            err(f"{where}.seeds", f"{s!r} is not a seed or a range 'A..B' (A <= B)")
        out += range(int(m[1]), int(m[2]) + 1)
    if not out:
        err(f"{where}.seeds", "is empty")
    if len(set(out)) != len(out):
        err(f"{where}.seeds", "names a seed twice")
    return out


def _option(v, kind, where, err):
    if kind == _BOOL:
        if not isinstance(v, bool):
            err(where, f"must be true or false, not {v!r}")
    elif kind in (_INT, _POS):
        if isinstance(v, bool) or not isinstance(v, int) or (kind == _POS and v <= 0):
            err(where, f"must be a {'positive ' if kind == _POS else ''}integer, not {v!r}")
    elif kind == _FRAC:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            err(where, f"must be a number in 0..1, not {v!r}")
    elif v is not None and not isinstance(v, str):
        err(where, f"must be a string, not {v!r}")
    return v


def _grid(params, where, err) -> list[dict]:
    if not isinstance(params, dict):
        err(where, "must be a table of parameter = [values]")
    axes = []
    for name, values in params.items():
        if name not in UNIT_PARAMS:
            err(f"{where}.{name}", f"not a unit parameter (known: {', '.join(UNIT_PARAMS)})")
        kind, _ = UNIT_PARAMS[name]
        values = values if isinstance(values, list) else [values]
        if not values:
            err(f"{where}.{name}", "is empty")
        for x in values:
            if kind is bool and not isinstance(x, bool):
                err(f"{where}.{name}", f"must be true or false, not {x!r}")
            if kind is int and (isinstance(x, bool) or not isinstance(x, int) or x < 0):
                err(f"{where}.{name}", f"must be a non-negative integer, not {x!r}")
        axes.append([(name, x) for x in values])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _check_units(spec: Spec, path: str) -> None:
    """Every parameter set must be a unit the RTL accepts (as the campaigns' own options check)."""
    seen: list[dict] = []
    for j in spec.jobs:
        if j.backend == "model" or j.params in seen:
            continue
        seen.append(j.params)
        from sim import unit_params
        try:
            unit_params.check(j.params)         # built only to be checked, and silenced
        except (ValueError, TypeError) as e:
            raise SpecError(f"{path}: jobs ({j.entry}).params {j.params}: {e}") from None

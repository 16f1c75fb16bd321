"""The paper/table registry: config/papers/<paper>.yaml, validated against a JSON schema at load.

Every table number the pipeline compares against lives here, with its provenance (`evidence`,
`source`). Targets (`<paper>_<table>`), reports and `python -m pipeline tables` all read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
PAPERS_DIR = CONFIG_DIR / "papers"
SCHEMA_DIR = CONFIG_DIR / "schema"
# The five papers, and the project's own tables (config/papers/project.yaml: no paper values).
PROJECT = "project"
PAPERS = ("botnet", "pvt", "hornet", "lvt", "patchconvnet", PROJECT)


class ConfigError(Exception):
    """A user-fixable problem in a config file; its message is one line naming file, entry and field."""


@dataclass(frozen=True)
class Row:
    paper: str
    table: str
    data: dict

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def metrics(self) -> dict:
        return self.data["metrics"]

    def __getitem__(self, key):
        return self.data.get(key)


def _where(doc: dict, path) -> str:
    """Describe a JSON path inside a registry file by table/row ids, e.g. `table 'table4' row 'pvt_tiny@1x'`."""
    parts, node = [], doc
    path = list(path)
    i = 0
    while i < len(path):
        key = path[i]
        if key in ("tables", "rows") and i + 1 < len(path) and isinstance(path[i + 1], int):
            idx = path[i + 1]
            try:
                node = node[key][idx]
                name = node.get("id") if isinstance(node, dict) else None
            except (KeyError, IndexError, TypeError):
                name = None
            parts.append(f"{key[:-1]} {name!r}" if name else f"{key}[{idx}]")
            i += 2
            continue
        break
    field = ".".join(str(p) for p in path[i:])
    entry = " ".join(parts) or "top level"
    return entry, field


# libyaml's safe loader where PyYAML has it: the same documents, several times faster (the registry is read on
# every Snakemake start).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return load_yaml(SCHEMA_DIR / name)


def validate(doc, schema_name: str, path: Path) -> None:
    """Raise ConfigError with one line for the first schema violation in `doc`."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return
    err = errors[0]
    entry, field = _where(doc, err.absolute_path) if isinstance(doc, dict) else ("top level", "")
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        message = f"{err.message}; valid fields: {', '.join(allowed)}"
    elif err.validator == "anyOf" and err.context and all(e.validator == "required" for e in err.context):
        fields = [name for e in err.context for name in e.validator_value]
        message = f"needs one of the fields {', '.join(fields)}"
        message += f" ({err.schema['$comment']})" if "$comment" in err.schema else ""
    elif err.validator == "anyOf" and err.context:
        # A value or a per-variant map of it: say what is wrong with the value, not that no form fits.
        reasons = [e for e in err.context if e.validator != "type"] or list(err.context)
        message = reasons[0].message
    else:
        message = err.message
    field_txt = f" field '{field}':" if field else ""
    raise ConfigError(f"{path}: {entry}:{field_txt} {message}")


CONFIG_WHERE = "config/config.yaml (or --config overrides)"


def check_config(config: dict) -> dict:
    """The experiment config validated (one line per problem), with command-line spellings of `seeds` taken as
    meant: snakemake's `--config seeds=0`, `seeds=[0,1]` (read as strings) and `seeds=0,1` give integers."""
    seeds = config.get("seeds")
    if isinstance(seeds, (int, str)) and not isinstance(seeds, bool):
        seeds = str(seeds).strip("[]").split(",")
    if isinstance(seeds, list) and all(isinstance(s, int) or (isinstance(s, str) and s.strip().isdigit())
                                       for s in seeds):
        config["seeds"] = [int(s) for s in seeds]
    validate(config, "config.schema.yaml", CONFIG_WHERE)
    return config


def _check_unique(doc: dict, path: Path) -> None:
    seen_tables = set()
    for table in doc["tables"]:
        if table["id"] in seen_tables:
            raise ConfigError(f"{path}: table {table['id']!r}: field 'id' is duplicated; table ids must be unique")
        seen_tables.add(table["id"])
        seen_rows = set()
        for row in table["rows"]:
            if row["id"] in seen_rows:
                raise ConfigError(f"{path}: table {table['id']!r} row {row['id']!r}: field 'id' is duplicated; "
                                  "row ids must be unique within a table")
            seen_rows.add(row["id"])


def _with_row_defaults(doc: dict) -> dict:
    """Each row with its table's `row_defaults` filled in where the row does not set the field."""
    for table in doc.get("tables") or []:
        defaults = table.get("row_defaults") if isinstance(table, dict) else None
        if isinstance(defaults, dict) and isinstance(table.get("rows"), list):
            table["rows"] = [{**defaults, **row} if isinstance(row, dict) else row for row in table["rows"]]
    return doc


def load_paper(path: Path) -> dict:
    doc = _with_row_defaults(load_yaml(path))
    validate(doc, "papers.schema.yaml", path)
    _check_unique(doc, path)
    if doc["paper"] != path.stem:
        raise ConfigError(f"{path}: top level: field 'paper' is {doc['paper']!r}; it must equal the file name "
                          f"{path.stem!r}")
    return doc


@functools.lru_cache(maxsize=None)
def _load_all(papers_dir: str) -> dict[str, dict]:
    out = {}
    for key in PAPERS:
        out[key] = load_paper(Path(papers_dir) / f"{key}.yaml")
    return out


def papers(papers_dir: Path = PAPERS_DIR) -> dict[str, dict]:
    """Every registry file (the five papers and the project's tables), validated, keyed by paper (`botnet`,
    `pvt`, ...)."""
    return _load_all(str(papers_dir))


def paper(key: str, papers_dir: Path = PAPERS_DIR) -> dict:
    docs = papers(papers_dir)
    if key not in docs:
        raise ConfigError(f"unknown paper {key!r}; valid papers: {', '.join(PAPERS)}")
    return docs[key]


def table(paper_key: str, table_id: str, papers_dir: Path = PAPERS_DIR) -> dict:
    doc = paper(paper_key, papers_dir)
    for t in doc["tables"]:
        if t["id"] == table_id:
            return t
    valid = ", ".join(t["id"] for t in doc["tables"])
    raise ConfigError(f"unknown table {table_id!r} for paper {paper_key!r}; valid tables: {valid}")


def row(paper_key: str, table_id: str, row_id: str, papers_dir: Path = PAPERS_DIR) -> Row:
    t = table(paper_key, table_id, papers_dir)
    for r in t["rows"]:
        if r["id"] == row_id:
            return Row(paper_key, table_id, r)
    valid = ", ".join(r["id"] for r in t["rows"])
    raise ConfigError(f"unknown row {row_id!r} in {paper_key} {table_id}; valid rows: {valid}")

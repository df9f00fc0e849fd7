"""The Registry: the Python API over the blob store and the catalog (``hub.catalog``).

Example:
    >>> from hub import Registry
    >>> reg = Registry("/tmp/hub-home")                                     # doctest: +SKIP
    >>> card = reg.push("out/sql-lora", name="team/sql-lora", tasks=["sql"]).card  # doctest: +SKIP
    >>> reg.search(method="lora", rank="<=16", tasks=["sql"])               # doctest: +SKIP
    >>> reg.pull("team/sql-lora@v1", "adapters/sql")                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from hub.blobstore import BlobStore, open_store
from hub.catalog import Catalog, Head, NewVersion, UpdateHead, open_catalog
from hub.catalog.rows import utcnow
from hub.folders import adapter_files, check_outside_registry
from hub.maintenance import GcReport, VerifyReport, collect_garbage, verify_store
from hub.search import SearchFilters, SearchQuery, run_search, run_search_json
from schemas.errors import (
    AdapterNotFound,
    HeadMoved,
    InvalidAdapter,
    OutputExists,
    RevisionNotFound,
)

if TYPE_CHECKING:
    # The pydantic models are imported where they are used: building them costs ~100 ms,
    # which `hub ls` (search_raw: plain dicts straight from SQLite) never pays.
    from hub.checkpoints import Checkpoint
    from schemas.card import AdapterCard, FileEntry, Lineage, Metric
    from schemas.recipe import Recipe
    from schemas.refs import AdapterRef


def default_home() -> Path:
    """``$HUB_HOME`` if set, else the per-user data directory (read at call time)."""
    if env := os.environ.get("HUB_HOME"):
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("hub", appauthor=False))


def commit_id(parent: str | None, files: Sequence[FileEntry]) -> str:
    """The deterministic 40-hex id of a version: a hash of its manifest and its parent."""
    manifest = {
        "parent": parent,
        "files": sorted([f.path, f.sha256, f.size] for f in files),
    }
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _default_namespace() -> str:
    with contextlib.suppress(Exception):
        user = re.sub(r"[^A-Za-z0-9._-]", "-", getpass.getuser()).strip(".-")
        if user:
            return user[:96]
    return "local"


@dataclass
class PushResult:
    card: AdapterCard
    created: bool
    """False when the content equals the latest version's (nothing new stored)."""
    left_out: list[str] = field(default_factory=list)
    """Training state in the folder that was not stored (``hub.inspect.files``)."""
    others: list[PushResult] = field(default_factory=list)
    """A multi-adapter folder's other adapters, each its own repository ``NAME-<adapter>``."""


def _check_annotations(
    tasks: list[str],
    tags: dict[str, str],
    metrics: list[Metric],
    description: str | None,
    parent: str | None,
) -> None:
    """Refuse text the index cannot store (lone surrogates) before anything is stored."""
    from schemas.inputs import check_text

    for task in tasks:
        check_text(task, "--task")
    for key, value in tags.items():
        check_text(key, "--tag key")
        check_text(value, f"--tag {key!r}")
    for metric in metrics:
        check_text(f"{metric.name}@{metric.dataset or ''}", "--metric")
    check_text(description or "", "description")
    check_text(parent or "", "--parent")


def _merged_ledger(registry: Registry, inspected: Any, lineage: Lineage) -> Any:
    """A merge result's card with ``params_trained`` from its inputs (``hub.inspect.ledger``)."""
    from hub.inspect.ledger import inputs_trained
    from schemas.card import InspectedAdapter

    inputs = [registry.show(ref).model_dump() for ref in lineage.inputs]
    operator = str((lineage.recipe or {}).get("operator") or "merge")
    fields = inputs_trained(inspected.model_dump(), inputs, operator)
    return InspectedAdapter.model_validate(fields)


class Registry:
    """Adapters stored in ``home``: the catalog (``index.db`` unless ``db`` names a
    database: ``hub.catalog.open_catalog``) plus a content-addressed blob store (the folder
    ``home/store`` unless ``store`` is a ``BlobStore`` or a store URL: ``hub.blobstore``)."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        db: str | None = None,
        store: BlobStore | str | None = None,
    ) -> None:
        self.home = (Path(home) if home is not None else default_home()).expanduser().absolute()
        self.home.mkdir(parents=True, exist_ok=True)
        # A URL (``--store`` / ``HUB_STORE_URL``) or None opens the backend it names.
        self.store = store if isinstance(store, BlobStore) else open_store(store, self.home)
        self.db = db
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        """The catalog, opened on first use (``hub.catalog.open_catalog``: a lost or damaged
        ``index.db`` raises ``IndexDamaged``, an unopenable one ``IndexUnavailable``)."""
        if self._catalog is None:
            self._catalog = open_catalog(self.db, self.home, store=self.store)
        return self._catalog

    def store_lock(self, *, shared: bool) -> contextlib.AbstractContextManager[None]:
        """The store lock, held for a ``with`` block by every process on this catalog
        (``Catalog.store_lock``; the rule is in hub/uploads.py): ``shared`` while writing
        blobs and the metadata that references them, exclusive for ``gc``."""
        return self.catalog.store_lock(shared=shared)

    @property
    def index(self) -> Catalog:
        """The catalog, by its name from before there were several backends."""
        return self.catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- push ---------------------------------------------------------------------------
    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        tasks: Iterable[str] = (),
        tags: dict[str, str] | Sequence[str] | None = None,
        metrics: Iterable[Metric | str] = (),
        parent: str | None = None,
        description: str | None = None,
        lineage: Lineage | None = None,
        details: dict[str, Any] | None = None,
        allow_nonfinite: bool = False,
        base_dirs: Sequence[Path] | None = None,
        expected_head: str | None = None,
        trainer: Checkpoint | None = None,
        _exclude: Sequence[str] = (),
    ) -> PushResult:
        """Register the adapter folder ``path`` as the next version of ``name``.

        The folder is inspected (config, tensor headers, shapes, NaN/Inf) before anything is
        written; blobs are stored durably before the version is committed to the index in one
        transaction, so a crash at any point leaves no half version.

        Args:
            path: a folder saved by PEFT's ``save_pretrained``.
            name: ``namespace/name``; defaults to ``<user>/<folder name>``.
            tasks: task labels such as ``sql``.
            tags: ``{"key": "value"}`` or ``["key=value", ...]``.
            metrics: ``Metric`` objects or ``"name=value[@dataset]"`` strings. A Trainer
                checkpoint folder (with ``trainer_state.json``) adds a record of the metrics
                logged at its weights' step, the best metric and the evaluation history, the
                tag ``step=N`` and ``details.trainer`` (``hub.checkpoints``); its
                ``all_results.json`` / ``eval_results.json`` and the README's ``model-index``
                become eval records with their metrics (``hub.eval_import``).
            parent: reference of the adapter this one was trained on top of (stacking).
            description: overrides the README's description.
            lineage: for composites: recipe and exact inputs.
            details: extra facts for the card's ``details`` (composites: retained energy).
            allow_nonfinite: accept NaN/Inf tensors.
            base_dirs: where the base folder the adapter names may be read to count its
                parameters; None: anywhere (a local push). The server passes its allow-list.
            expected_head: the commit the caller built on (a Hugging Face commit's parent;
                ``commit_id(None, [])`` for a repository without a version): checked inside
                the commit's transaction, so a concurrent commit is never overwritten.
            trainer: what the folder's ``trainer_state.json`` says, read where the folder was
                (a push to a team hub: the server is sent the adapter's files alone, so the
                client reads the file and the checkpoint folders); None: read from ``path``.

        A multi-adapter save (PEFT writes each adapter but ``default`` to a subfolder of its
        name) becomes one repository per adapter: ``name`` for ``default`` (the top-level
        files) and ``name-<adapter>`` for each subfolder; every one is inspected before any is
        stored, and each loads alone with ``PeftModel.from_pretrained``.

        Returns:
            ``PushResult(card, created, others)``; ``created`` is False when the files equal the
            latest version's (the given tasks/tags/metrics are then added to that version);
            ``others`` holds the results of a multi-adapter folder's other adapters.

        Raises:
            InvalidName, InvalidAdapter, UnsafeFormat, AdapterNotFound (parent),
            HeadMoved (412: the head is not ``expected_head``).
        """
        from hub.checkpoints import read_trainer_state
        from hub.eval_import import assign_ids, read_imports
        from hub.inspect import extra_adapters, inspect_adapter
        from schemas.card import FileEntry, Lineage, Metric, parse_tags
        from schemas.refs import validate_repo_id

        folder = Path(path)
        repo = validate_repo_id(name) if name else self._default_name(folder)
        tag_map = dict(tags) if isinstance(tags, dict) else parse_tags(list(tags or []))
        metric_list = [m if isinstance(m, Metric) else Metric.parse(m) for m in metrics]
        task_list = sorted({t.strip() for t in tasks if t.strip()})
        if not folder.is_dir():
            raise InvalidAdapter(f"{folder}: not a folder (give the folder save_pretrained wrote)")
        self.catalog  # noqa: B018 (opened before any blob is stored: a lost index refuses here)
        extras = [] if _exclude else extra_adapters(folder)
        if extras:
            return self._push_adapters(
                folder, repo, extras, tasks=task_list, tags=tag_map, metrics=metric_list,
                parent=parent, description=description, allow_nonfinite=allow_nonfinite,
                base_dirs=base_dirs, trainer=trainer,
            )  # fmt: skip
        # Walked first: a link out of the folder or a FIFO is refused before inspection reads
        # anything through it. Links into our own store are the server's staged pushes.
        files_on_disk = adapter_files(folder, trusted=self.store.materialized_roots())
        if _exclude:  # the top adapter of a multi-adapter folder: its own files only
            files_on_disk = [f for f in files_on_disk if f[0].split("/")[0] not in _exclude]
        inspected = inspect_adapter(
            folder,
            allow_nonfinite=allow_nonfinite,
            base_dirs=base_dirs,
            optimizer=tag_map.get("optimizer"),
        )
        if lineage is not None and lineage.inputs and inspected.method != "composite":
            inspected = _merged_ledger(self, inspected, lineage)
        # a Trainer checkpoint: its step and logged metrics
        trained = trainer if trainer is not None else read_trainer_state(folder)
        if trained is not None:
            if trained.weights_step is not None:
                tag_map = {"step": str(trained.weights_step), **tag_map}
            details = {"trainer": trained.details(), **(details or {})}
        # all_results.json, eval_results.json, README model-index: records with provenance.
        imports = read_imports(folder, known=trained.metrics if trained else ())
        state = trained.imported() if trained is not None else None  # after: n filled in
        if state is not None:
            imports.insert(0, state)
        logged = state.metrics if state is not None else []
        _check_annotations(task_list, tag_map, metric_list + logged, description, parent)
        if details:
            inspected.details = {**inspected.details, **details}
        if parent is not None:
            parent_card = self.show(parent)
            lineage = (lineage or Lineage()).model_copy(update={"parent": parent_card.ref})
            inspected.parent = parent_card.ref

        with self.store_lock(shared=True):
            entries = []
            for rel, abs_path in files_on_disk:
                digest, size = self.store.put_file(abs_path, description=f"push {rel}")
                entries.append(FileEntry(path=rel, sha256=digest, size=size))
            inspected.size_bytes = sum(entry.size for entry in entries)  # what is stored
            assign_ids(repo, entries, imports)
            result = self._commit(
                repo,
                inspected.model_dump(),
                entries,
                task_list,
                tag_map,
                metric_list + [m for item in imports for m in item.metrics],
                description,
                lineage,
                [item.record for item in imports],
                expected_head,
            )
        from hub.inspect.files import training_outputs

        result.left_out = training_outputs(folder)
        return result

    def push_checkpoints(self, path: str | os.PathLike[str], **options: Any) -> list[PushResult]:
        """Push each ``checkpoint-<step>/`` of a Trainer output folder as a version, in step
        order, with its step and logged metrics (``hub.checkpoints.push_checkpoints``)."""
        from hub.checkpoints import push_checkpoints

        return push_checkpoints(self, Path(path), **options)

    def _push_adapters(
        self, folder: Path, repo: str, extras: list[str], **options: Any
    ) -> PushResult:
        """Push a multi-adapter folder: ``repo`` for ``default``, ``repo-<adapter>`` for each
        subfolder, after checking every one (nothing is stored when one is invalid)."""
        from hub.inspect import inspect_adapter
        from schemas.refs import validate_repo_id

        names = {sub: validate_repo_id(f"{repo}-{sub}") for sub in extras}
        has_default = (folder / "adapter_config.json").is_file()
        check = dict(allow_nonfinite=options["allow_nonfinite"], base_dirs=options["base_dirs"])
        if has_default:
            inspect_adapter(folder, **check)
        for sub in extras:
            inspect_adapter(folder / sub, **check)
        trainer = options.pop("trainer", None)  # the folder's own trainer_state.json: the top one's
        results = (
            [self.push(folder, name=repo, _exclude=extras, trainer=trainer, **options)]
            if has_default
            else []
        )
        results += [self.push(folder / sub, name=names[sub], **options) for sub in extras]
        return PushResult(
            results[0].card, results[0].created, results[0].left_out, others=results[1:]
        )

    def create_repo(self, repo: str) -> bool:
        """Create an empty repository (no version yet); False if it already exists."""
        from schemas.refs import validate_repo_id

        namespace, short = validate_repo_id(repo).split("/")
        return self.catalog.create_repo(repo, namespace, short)

    def _default_name(self, folder: Path) -> str:
        from schemas.refs import validate_repo_id

        name = re.sub(r"[^A-Za-z0-9._-]", "-", folder.resolve().name).strip(".-") or "adapter"
        return validate_repo_id(f"{_default_namespace()}/{name[:96]}")

    def _commit(
        self,
        repo: str,
        inspected: dict[str, Any],
        entries: list[FileEntry],
        tasks: list[str],
        tags: dict[str, str],
        metrics: list[Metric],
        description: str | None,
        lineage: Lineage | None,
        records: Sequence[dict[str, Any]] = (),
        expected_head: str | None = None,
    ) -> PushResult:
        from hub.evals import prepare_imported
        from hub.reledger import refresh_ledger
        from schemas.card import AdapterCard

        def build(head: Head) -> NewVersion | UpdateHead:
            if expected_head is not None:
                found = head.commit or commit_id(None, [])
                if found != expected_head:
                    raise HeadMoved(
                        f"{repo} moved on: parent commit {expected_head[:12]} is not the head"
                        f" {found[:12]} (fetch the latest revision and commit again)",
                        repo=repo,
                        expected=expected_head,
                        head=found,
                        status=412,
                    )
            if head.card is not None:
                latest_card = head.card
                same_files = sorted((f.path, f.sha256) for f in entries) == sorted(
                    (f["path"], f["sha256"]) for f in latest_card["files"]
                )
                if same_files:
                    # Nothing new to store: fold the new annotations into the latest version.
                    latest_card["tasks"] = sorted(set(latest_card["tasks"]) | set(tasks))
                    latest_card["tags"] = {**latest_card["tags"], **tags}
                    latest_card["metrics"] = latest_card["metrics"] + [
                        m.model_dump()
                        for m in metrics
                        if m.model_dump() not in latest_card["metrics"]
                    ]  # pushing a checkpoint again must not repeat its trainer metrics
                    if description:
                        latest_card["description"] = description
                    refresh_ledger(latest_card, inspected)
                    return UpdateHead(latest_card, prepare_imported(latest_card, records))
            card = AdapterCard(
                **{**inspected, "description": description or inspected.get("description")},
                repo=repo,
                version=head.next_version,
                commit=commit_id(head.commit, entries),
                tasks=tasks,
                tags=tags,
                metrics=metrics,
                files=entries,
                lineage=lineage,
                created_at=utcnow(),
            )
            built[:] = [card]
            card_dict = card.model_dump(mode="json", exclude={"aliases"})
            return NewVersion(card_dict, head.commit, prepare_imported(card_dict, records))

        built: list[AdapterCard] = []
        committed = self.catalog.commit(repo, build)
        if committed.created:
            return PushResult(built[0], created=True)
        card = {**committed.card, "aliases": committed.aliases}
        return PushResult(AdapterCard.model_validate(card), created=False)

    def _card(self, card: dict[str, Any], version_id: int) -> AdapterCard:
        from schemas.card import AdapterCard

        return AdapterCard.model_validate({**card, "aliases": self.catalog.aliases(version_id)})

    # -- lookups ------------------------------------------------------------------------
    def _resolve(self, ref: str | AdapterRef) -> tuple[int, dict[str, Any]]:
        """(version row id, card dict) for ``ref``; raises AdapterNotFound/RevisionNotFound."""
        from schemas.refs import AdapterRef

        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        catalog = self.catalog
        repo_row = catalog.repo(parsed.repo)
        if repo_row is None:
            raise AdapterNotFound(
                f"no adapter named {parsed.repo!r} in the registry at {self.home}",
                repo=parsed.repo,
            )
        last_version = repo_row.last_version
        if not last_version:
            raise RevisionNotFound(
                f"{parsed.repo} has no version yet (it was created empty, over the Hugging Face"
                f" API): push to it first, or remove it with `hub rm {parsed.repo}`",
                repo=parsed.repo,
                revision=parsed.revision,
            )
        kind = parsed.revision_kind
        if kind == "latest":
            rows = catalog.find_versions(parsed.repo, number=last_version)
        elif kind == "version":
            rows = catalog.find_versions(parsed.repo, number=parsed.version)
        elif kind == "alias":
            rows = catalog.find_versions(parsed.repo, alias=parsed.revision)
        else:
            rows = catalog.find_versions(parsed.repo, commit_prefix=parsed.revision)
            if len(rows) > 1:
                raise RevisionNotFound(
                    f"commit prefix {parsed.revision!r} is ambiguous in {parsed.repo}:"
                    " give more characters",
                    repo=parsed.repo,
                    revision=parsed.revision,
                )
        if not rows:
            raise RevisionNotFound(
                f"{parsed.repo} has no revision {parsed.revision!r} (latest is v{last_version};"
                f" list versions with `hub show {parsed.repo} --versions`)",
                repo=parsed.repo,
                revision=parsed.revision,
            )
        return rows[0].version_id, rows[0].card

    def show(self, ref: str | AdapterRef) -> AdapterCard:
        """The card of ``ref`` (``ns/name``, ``ns/name@v3``, ``@prod``, ``@<commit>``)."""
        version_id, card = self._resolve(ref)
        return self._card(card, version_id)

    def versions(self, repo: str) -> list[AdapterCard]:
        """Every version of ``repo``, oldest first (none for a repository created empty)."""
        from schemas.refs import validate_repo_id

        validate_repo_id(repo)
        if self.catalog.repo(repo) is None:
            raise AdapterNotFound(
                f"no adapter named {repo!r} in the registry at {self.home}",
                repo=repo,
            )
        return [self._card(row.card, row.version_id) for row in self.catalog.versions(repo)]

    def search(
        self, query: str | None = None, **filters: Unpack[SearchFilters]
    ) -> list[AdapterCard]:
        """Cards matching every filter (latest version of each repo unless ``all_versions``).

        Filters: ``base`` (exact or glob), ``method`` (``dora`` too), ``library`` (``peft``,
        ``adapters``), ``rank`` (``8``, ``8..16``, ``<=16``), ``tasks``, ``tags`` (``K=V`` or
        ``K``), ``sort`` (a field or ``metric:NAME``; ``+``/``-`` for the direction),
        ``limit``, ``all_versions``.

        Example:
            >>> reg.search("sql", base="meta-llama/Llama-3-8B", rank="<=16",
            ...            sort="metric:exact_match", limit=5)      # doctest: +SKIP
        """
        from schemas.card import AdapterCard

        return [AdapterCard.model_validate(c) for c in self.search_raw(query, **filters)]

    def search_raw(
        self, query: str | None = None, **filters: Unpack[SearchFilters]
    ) -> list[dict[str, Any]]:
        """Like ``search`` but JSON-ready dicts, skipping model validation."""
        return run_search(self.catalog, SearchQuery.of(query, **filters))

    def search_json(self, query: str | None = None, **filters: Unpack[SearchFilters]) -> list[str]:
        """Like ``search`` but each card as JSON text (what ``hub ls --json`` prints)."""
        return run_search_json(self.catalog, SearchQuery.of(query, **filters))

    def file_entry(self, card: AdapterCard, path: str) -> FileEntry:
        """The entry (path, sha256, size) of file ``path`` of ``card``.

        Raises:
            InvalidAdapter: ``card`` has no such file.
        """
        for entry in card.files:
            if entry.path == path:
                return entry
        raise InvalidAdapter(f"{card.repo}@v{card.version} has no file {path!r}", repo=card.repo)

    def read_file(self, card: AdapterCard, path: str) -> bytes:
        """The bytes of file ``path`` of ``card`` (small files: configs, READMEs)."""
        return self.store.read_bytes(self.file_entry(card, path).sha256)

    def blob_path(self, card: AdapterCard, path: str) -> Path:
        """A file on this machine with the bytes of ``path`` of ``card`` (read-only use), for
        code that hands a path to a library. Only stores with local files have one.

        Raises:
            InvalidAdapter: ``card`` has no such file. StoreCorrupted: its blob is missing, or
                the store keeps no local files (read it with ``read_file`` / ``store.open``).
        """
        from hub.blobstore.base import missing
        from schemas.errors import StoreCorrupted

        digest = self.file_entry(card, path).sha256
        local = self.store.local_path(digest)
        if local is not None:
            return local
        if not self.store.has(digest):
            raise missing(digest)
        raise StoreCorrupted(
            f"the store {self.store.location} keeps no local files: read {path!r} of"
            f" {card.repo}@v{card.version} with Registry.read_file",
            digest=digest,
        )

    def link_files(self, card: AdapterCard, folder: Path) -> Path:
        """Lay out ``card``'s files in ``folder`` for read-only use by compose, export, load
        and evaluation (``BlobStore.materialize``: links to the stored blobs, nothing is
        copied). The files stay for the caller's scratch folder to remove. Returns ``folder``.

        Raises:
            InvalidAdapter: a file path of the card escapes ``folder``.
        """
        try:
            with self.store.materialize({e.path: e.sha256 for e in card.files}, folder):
                return folder
        except InvalidAdapter as error:
            raise InvalidAdapter(f"{card.repo}: {error}", repo=card.repo) from None

    def load(self, base_model: Any, ref: str) -> Any:
        """A ready model: ``base_model`` with adapter, stack or ensemble ``ref`` applied.

        Example:
            >>> model = Registry().load(AutoModelForCausalLM.from_pretrained(base),
            ...                         "team/stacked@v1")                  # doctest: +SKIP
        """
        from compose.composites import load_composed

        card = self.show(ref)
        with self.scratch("load") as tmp:
            return load_composed(base_model, self.link_files(card, tmp / "adapter"))

    def scratch(self, purpose: str) -> contextlib.AbstractContextManager[Path]:
        """A scratch folder ``home/tmp/<purpose>-XXXXXXXX`` (``compose``, ``export``, ``load``,
        ``eval``), removed after the ``with`` block; ``gc`` removes the ones a killed process
        left."""
        from compose.staging import work_folder

        return work_folder(self.home / "tmp", purpose)

    # -- pull ---------------------------------------------------------------------------
    def pull(
        self,
        ref: str | AdapterRef,
        dest: str | os.PathLike[str] | None = None,
        *,
        force: bool = False,
        with_evals: bool = False,
    ) -> Path:
        """Write the files of ``ref`` into ``dest`` (default ``./<name>``), byte for byte.

        With ``with_evals``, the README's front matter also gets the version's metrics as a
        Hugging Face ``model-index`` (``hub.model_index``; a push reads them back). Metrics
        without a dataset (a Trainer's) are left out, the format requires one:
        ``hub.model_index.model_index(card)`` says which (``hub pull`` prints them).

        The folder is assembled next to ``dest`` and renamed into place at the end, so a failure
        leaves nothing behind (and a SIGKILL leaves a hidden leftover that the next pull to
        ``dest`` removes). Every byte is checked against its sha256 on the way out.

        Raises:
            AdapterNotFound, RevisionNotFound, OutputExists (``dest`` is a non-empty folder and
            ``force`` is False), InvalidArgument (``dest`` is, contains or is inside the
            registry folder), StoreCorrupted.
        """
        from compose.staging import staged_folder

        card = self.show(ref)
        target = Path(dest) if dest is not None else Path.cwd() / card.repo.split("/")[1]
        check_outside_registry(target, self.home)
        if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
            raise OutputExists(
                f"{target} already exists and is not empty (choose another -o or pass --force)",
                path=str(target),
            )
        with staged_folder(target, force=force) as staging, self.store_lock(shared=True):
            for entry in card.files:
                out = (staging / entry.path).resolve()
                if not out.is_relative_to(staging.resolve()):
                    raise InvalidAdapter(f"file path {entry.path!r} escapes the folder")
                out.parent.mkdir(parents=True, exist_ok=True)
                self.store.copy_out(entry.sha256, out, description=f"pull {entry.path}")
            if with_evals:
                from hub.model_index import write_model_index

                write_model_index(staging, card)
        return target

    # -- compose ------------------------------------------------------------------------
    def compose(self, recipe: Recipe | dict[str, Any], *, device: str = "auto") -> PushResult:
        """Build a composite (merge, stack, ensemble) from ``recipe`` and push it.

        ``device`` (``auto``, ``cpu``, ``cuda``) is where the merge math runs.

        Inputs are resolved to exact commits, recorded in the result's lineage with the
        operator's resolved parameters, so ``rebuild`` can recompute and check it.

        Example:
            >>> reg.compose({"operator": "svd", "name": "team/sql-chat", "rank": 16,
            ...              "inputs": ["team/sql-lora", "team/chat-lora"],
            ...              "weights": [0.6, 0.4]})                        # doctest: +SKIP

        Raises:
            InvalidRecipe, IncompatibleAdapters, AdapterNotFound, RevisionNotFound.
        """
        from hub.composer import compose
        from schemas.recipe import Recipe, recipe_from_data

        if not isinstance(recipe, Recipe):
            recipe = recipe_from_data(recipe, "recipe")
        return compose(self, recipe, device)

    def compose_search(
        self, refs: Sequence[str], data: str | os.PathLike[str], **options: Any
    ) -> Any:
        """Search merge weights on a few examples and push the merge if it beats the best
        single input and uniform weights on held-out rows (``hub.compose_search``)."""
        from hub.compose_search import compose_search

        return compose_search(self, list(refs), data, **options)

    def rebuild(self, ref: str) -> Any:
        """Recompute the composite ``ref`` and compare it with what is stored, file by file.

        Returns:
            ``hub.composer.RebuildReport``: ``matches``, the ``differing`` paths, and per file
            whether it is identical or within the rounding bound, with the largest relative
            difference (``compose.reproduce`` derives the bound).
        """
        from hub.composer import rebuild

        return rebuild(self, ref)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(
        self, refs: str | Sequence[str], data: str | os.PathLike[str], **options: Any
    ) -> list[dict[str, Any]]:
        """Score adapters on a JSONL file and record the results on their versions.

        See ``hub.evals.evaluate`` for the options (base, metrics, limit, device, dtype...).

        Example:
            >>> reg.evaluate("team/sql-lora", "qa.jsonl")[0]["delta"]       # doctest: +SKIP
        """
        from hub.evals import evaluate

        return evaluate(self, [refs] if isinstance(refs, str) else list(refs), data, **options)

    def rerun_eval(self, eval_id: str, **options: Any) -> dict[str, Any]:
        """Repeat the eval ``eval_id`` and record it, linked; see ``hub.eval_rerun.rerun``."""
        from hub.eval_rerun import rerun

        return rerun(self, eval_id, **options)

    def evaluate_lm_eval(
        self,
        refs: str | Sequence[str],
        task: str,
        include_path: str | os.PathLike[str],
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Score adapters on a local lm-evaluation-harness task with lm-eval's own evaluator,
        recorded like a native eval; see ``hub.lm_evals.evaluate_lm_eval``.

        Example:
            >>> reg.evaluate_lm_eval("team/sql-lora", "sql_choice", "tasks/")  # doctest: +SKIP
        """
        from hub.lm_evals import evaluate_lm_eval

        return evaluate_lm_eval(
            self, [refs] if isinstance(refs, str) else list(refs), task, include_path, **options
        )

    def evals(self, ref: str | AdapterRef) -> list[dict[str, Any]]:
        """The eval records of one version (``hub eval`` runs, ``hub metric add``)."""
        from hub.evals import records_for

        return records_for(self, self.show(ref))

    def add_metric(self, ref: str, spec: str, **options: Any) -> dict[str, Any]:
        """Record ``NAME=VALUE[@DATASET]`` on an existing version; see ``hub.evals.add_metric``."""
        from hub.evals import add_metric

        return add_metric(self, ref, spec, **options)

    # -- export -------------------------------------------------------------------------
    def export(
        self,
        refs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        base: str | os.PathLike[str],
        output: str | os.PathLike[str],
        format: str = "safetensors",
        dtype: str | None = None,
        quant: str | None = None,
        device: str | None = None,
        force: bool = False,
        progress: bool = True,
    ) -> Any:
        """Export ``base`` with adapter(s) ``refs`` merged in order, or bundled for serving.

        ``refs`` are references (``ns/name@rev``) or adapter folders; ``base`` is a model folder
        or a reference. Formats: ``safetensors``, ``gguf``, ``gguf-lora``, ``fp8``,
        ``vllm-bundle``. ``device`` (``auto``, ``cpu``, ``cuda``; unset: ``auto``) is where
        the merge runs, for the formats that merge. The output folder appears whole or not at
        all.

        Returns:
            ``compose.deploy.ExportResult`` (path, files, sizes, format details).

        Raises:
            AdapterNotFound, RevisionNotFound, InvalidArgument, OutputExists,
            IncompatibleAdapters, InsufficientDiskSpace.

        Example:
            >>> reg.export("team/sql-lora@prod", base="models/llama", output="deploy/sql",
            ...            format="gguf", quant="q8_0")                   # doctest: +SKIP
        """
        from hub.deploy import export

        items = [refs] if isinstance(refs, str | os.PathLike) else list(refs)
        return export(
            self,
            items,
            base=base,
            output=output,
            format=format,
            dtype=dtype,
            quant=quant,
            device=device,
            force=force,
            progress=progress,
        )

    # -- edits --------------------------------------------------------------------------
    def remove(self, ref: str | AdapterRef) -> list[AdapterCard]:
        """Remove a whole repository (``ns/name``) or one version (``ns/name@v2``).

        Blobs are left for ``gc`` (another version may share them). Returns the versions
        removed (none for a repository created empty, which is removed all the same).
        """
        from schemas.refs import AdapterRef

        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        if parsed.revision is None:
            removed = self.versions(parsed.repo)
        else:
            removed = [self.show(parsed)]
        # Looked up again in the removal's transaction: a concurrent `hub rm` may have
        # removed the repository or some of these versions since they were read above.
        if not self.catalog.remove_versions(parsed.repo, [card.commit for card in removed]):
            raise RevisionNotFound(
                f"{parsed.repo}@{parsed.revision or 'main'} was removed meanwhile",
                repo=parsed.repo,
                revision=parsed.revision,
            )
        return removed

    def tag(self, ref: str | AdapterRef, alias: str) -> AdapterCard:
        """Point ``alias`` (e.g. ``prod``) at the version ``ref`` names; moves it if it exists.

        Raises:
            AdapterNotFound, RevisionNotFound (also when the version is removed meanwhile).
        """
        from schemas.refs import AdapterRef, validate_alias

        validate_alias(alias)
        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        version_id, card = self._resolve(parsed)
        # The version may have been removed between the lookup and the alias's transaction.
        aliases = self.catalog.set_alias(version_id, alias)
        if aliases is None:
            raise RevisionNotFound(
                f"{parsed.repo}@v{card['version']} was removed while `hub tag` ran;"
                " nothing was tagged",
                repo=parsed.repo,
                revision=parsed.revision,
            )
        from schemas.card import AdapterCard

        return AdapterCard.model_validate({**card, "aliases": aliases})

    # -- maintenance --------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Re-hash every stored blob the index references; name the versions of bad ones."""
        return verify_store(self)

    def gc(self) -> GcReport:
        """Delete blobs no version references and leftovers of interrupted writes.

        Holds the store lock exclusively, so it waits for in-flight pushes and pulls. Blobs
        uploaded to `hub serve` in the last 24 hours are kept for their commit
        (hub/uploads.py).
        """
        return collect_garbage(self)

"""`llmctl filter`: crawl files to clean documents."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl import config as C
from llmctl.cli.app import ConfigOpt, ExecutorOpt, OverwriteOpt, RayAddressOpt, SetOpt, WorkersOpt, app
from llmctl.cli.common import out, print_config, print_funnel


@app.command("filter")
def filter_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="WARC/WET/JSONL(.gz)/Parquet files, globs, directories, llmctl datasets, or fsspec URIs (s3://bucket/crawl/*.warc.gz)."
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="Output dataset directory: a local path or an fsspec URI (s3://bucket/docs)."
        ),
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    steps: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated steps, in the order they run; quality runs only with --quality-model."),
    ] = None,
    no_c4: Annotated[bool, typer.Option("--no-c4", help="Skip the C4 rules.")] = False,
    no_gopher: Annotated[
        bool, typer.Option("--no-gopher", help="Skip the Gopher quality and repetition rules.")
    ] = False,
    no_pii: Annotated[bool, typer.Option("--no-pii", help="Skip the PII scrub.")] = False,
    no_langid: Annotated[
        bool,
        typer.Option(
            "--no-langid", rich_help_panel="Language and toxicity", help="Skip language identification (lid.176)."
        ),
    ] = False,
    languages: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="Language and toxicity",
            help='Comma-separated languages to keep (lid.176 codes; default en); "" keeps all and only fills the language columns.',
        ),
    ] = None,
    langid_threshold: Annotated[
        Optional[float],
        typer.Option(
            rich_help_panel="Language and toxicity", help="Minimum probability of a kept language (default 0.65)."
        ),
    ] = None,
    toxicity: Annotated[
        Optional[bool],
        typer.Option(
            "--toxicity/--no-toxicity",
            rich_help_panel="Language and toxicity",
            help="Score offensive language (alt-profanity-check's model) into toxicity_score (default: off).",
        ),
    ] = None,
    toxicity_threshold: Annotated[
        Optional[float],
        typer.Option(
            rich_help_panel="Language and toxicity", help="Remove documents with toxicity_score >= this (default 0.8)."
        ),
    ] = None,
    pii_bare_phones: Annotated[
        bool, typer.Option("--pii-bare-phones", help="Also scrub bare 10-digit phone numbers (5551234567).")
    ] = False,
    url_blocklist: Annotated[
        Optional[list[str]],
        typer.Option(
            rich_help_panel="URL and decontamination",
            help="A file of domains (subdomains match too) and URLs whose documents are removed, before extraction (repeatable).",
        ),
    ] = None,
    url_allowlist: Annotated[
        Optional[list[str]],
        typer.Option(
            rich_help_panel="URL and decontamination",
            help="A file of domains and URLs always kept, whatever the blocklist or banned URL words say (repeatable).",
        ),
    ] = None,
    decontaminate: Annotated[
        Optional[list[str]],
        typer.Option(
            rich_help_panel="URL and decontamination",
            help="An eval set (CSV/JSONL/Parquet file, folder, mmlu, gsm8k): remove documents sharing a 13-gram with one of its items (repeatable).",
        ),
    ] = None,
    decontaminate_mode: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="URL and decontamination",
            help="span: cut only the matching spans out of a document; drop: remove the whole document (default drop).",
        ),
    ] = None,
    no_rejected: Annotated[
        bool, typer.Option("--no-rejected", help="Do not keep removed documents (in OUT.rejected).")
    ] = False,
    dedup: Annotated[
        Optional[bool],
        typer.Option("--dedup/--no-dedup", rich_help_panel="Dedup", help="All dedup steps on or off (default: on)."),
    ] = None,
    exact: Annotated[
        Optional[bool],
        typer.Option("--exact/--no-exact", rich_help_panel="Dedup", help="Exact dedup of normalized text."),
    ] = None,
    c4_span: Annotated[
        Optional[bool],
        typer.Option("--c4-span/--no-c4-span", rich_help_panel="Dedup", help="C4 three-sentence span dedup."),
    ] = None,
    line_dedup: Annotated[
        bool,
        typer.Option(
            "--line-dedup",
            rich_help_panel="Dedup",
            help="Cut lines found in more than --line-max-docs documents from all but the first.",
        ),
    ] = False,
    line_dedup_all: Annotated[
        bool,
        typer.Option(
            "--line-dedup-all",
            rich_help_panel="Dedup",
            help="With --line-dedup: cut every copy of such a line, the first document's too (CCNet).",
        ),
    ] = False,
    line_max_docs: Annotated[
        Optional[int],
        typer.Option(rich_help_panel="Dedup", help="A line in more documents than this is boilerplate (default 10)."),
    ] = None,
    minhash: Annotated[
        Optional[bool], typer.Option("--minhash/--no-minhash", rich_help_panel="Dedup", help="MinHash near-dedup.")
    ] = None,
    minhash_threshold: Annotated[
        Optional[float], typer.Option(rich_help_panel="Dedup", help="Jaccard threshold of MinHash dedup (default 0.8).")
    ] = None,
    num_perm: Annotated[
        Optional[int], typer.Option(rich_help_panel="Dedup", help="MinHash permutations (default 128).")
    ] = None,
    bands: Annotated[
        Optional[int],
        typer.Option(rich_help_panel="Dedup", help="LSH bands, with --rows (default: derived from the threshold)."),
    ] = None,
    rows: Annotated[
        Optional[int], typer.Option(rich_help_panel="Dedup", help="LSH rows per band (with --bands).")
    ] = None,
    dedup_scope: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="Dedup", help="self (within this run) or self+against (also against --against datasets)."
        ),
    ] = None,
    against: Annotated[
        Optional[list[str]],
        typer.Option(
            rich_help_panel="Dedup", help="Earlier llmctl filter output whose documents count as earlier (repeatable)."
        ),
    ] = None,
    dedup_partitions: Annotated[
        Optional[int],
        typer.Option(
            rich_help_panel="Dedup",
            help="Key partitions of the dedup shuffle: tasks per grouping/checking/span step (default: one per 100k documents). Output does not depend on it.",
        ),
    ] = None,
    keep_work: Annotated[
        bool, typer.Option("--keep-work", rich_help_panel="Dedup", help="Keep the dedup intermediates in OUT/_work.")
    ] = False,
    quality_model: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="Quality classifier",
            help="fastText model dir from `llmctl quality train`: fills quality_score.",
        ),
    ] = None,
    quality_threshold: Annotated[
        Optional[float],
        typer.Option(
            rich_help_panel="Quality classifier",
            help="Keep documents with quality_score >= this: a probability (0.5 when not given), or a grade for a model trained on grades (its training --threshold when not given).",
        ),
    ] = None,
    quality_keep: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="Quality classifier",
            help="above: keep scores >= threshold (quality); below: keep scores < it (a toxic/nsfw classifier).",
        ),
    ] = None,
    quality_sampling: Annotated[
        Optional[str],
        typer.Option(
            rich_help_panel="Quality classifier",
            help="threshold or pareto (GPT-3: keep when Pareto(alpha) > 1 - score).",
        ),
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option(
            rich_help_panel="Quality classifier", help="Pareto shape for --quality-sampling pareto (default 9)."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(rich_help_panel="Quality classifier", help="Seed of the Pareto draws (per document id)."),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
    ] = False,
) -> None:
    """Extract text from a crawl, keep the documents that pass langid, Gopher, C4, PII (URL, toxicity, decontamination, quality) steps, then dedup.

    Pages are decoded in their own charset (HTTP header, BOM, <meta>, else detection). langid
    (fastText lid.176) keeps English by default: the C4 and Gopher rules are English rules.
    Dedup (exact, C4 three-sentence spans, MinHash; lines with --line-dedup) runs over all
    inputs after the per-shard steps.

    Writes OUT/part-*.parquet (the kept documents: pandas, pyarrow, duckdb or datasets pointed at
    OUT read those only) and OUT/_manifest.json (config, inputs, funnel); removed documents go to
    the dataset OUT.rejected beside it, each with the rule that removed it (a duplicate: with the
    id of the document it repeats). Re-running the same command resumes an interrupted run.

    OUT/_stats.json has each step's documents in and out, seconds, and drop reasons.
    """
    from llmctl.data.filter import FilterConfig, run_filter  # pyarrow: kept out of --help

    flags = {
        "steps": steps,
        "workers": workers,
        "executor": executor,
        "ray_address": ray_address,
        "c4.enabled": False if no_c4 else None,
        "gopher_quality.enabled": False if no_gopher else None,
        "gopher_repetition.enabled": False if no_gopher else None,
        "pii.enabled": False if no_pii else None,
        "pii.bare_phones": True if pii_bare_phones else None,
        "langid.enabled": False if no_langid else None,
        "langid.threshold": langid_threshold,
        "langid.languages": [x.strip() for x in languages.split(",") if x.strip()] if languages is not None else None,
        "toxicity.enabled": toxicity,
        "toxicity.threshold": toxicity_threshold,
        "url.blocklist": url_blocklist or None,
        "url.allowlist": url_allowlist or None,
        "decontaminate.sets": [p for v in decontaminate for p in v.split(",") if p] if decontaminate else None,
        "decontaminate.mode": decontaminate_mode,
        "dedup.line": True if line_dedup else None,
        "dedup.line_max_docs": line_max_docs,
        "dedup.line_keep_first": False if line_dedup_all else None,
        "write_rejected": False if no_rejected else None,
        "dedup.exact": exact if exact is not None else dedup,
        "dedup.minhash": minhash if minhash is not None else dedup,
        "dedup.c4_span": c4_span if c4_span is not None else dedup,
        "dedup.threshold": minhash_threshold,
        "dedup.num_perm": num_perm,
        "dedup.bands": bands,
        "dedup.rows": rows,
        "dedup.scope": dedup_scope or ("self+against" if against else None),
        "dedup.against": against or None,
        "dedup.keep_work": True if keep_work else None,
        "dedup.partitions": dedup_partitions,
        "quality.model": quality_model,
        "quality.threshold": quality_threshold,
        "quality.sampling": quality_sampling,
        "quality.keep": quality_keep,
        "quality.alpha": alpha,
        "quality.seed": seed,
    }
    cfg = C.load(FilterConfig, config, set_, flags)
    if print_config_:
        print_config(cfg)
        return
    manifest = run_filter(inputs, output, cfg, overwrite=overwrite)
    print_funnel(manifest["stats"]["funnel"])
    t = manifest["timings"]
    out.print(
        f"wrote {manifest['num_rows']:,} documents in {len(manifest['shards'])} shards to {output} "
        f"({t.get('run_seconds', t['seconds'])} s)"
    )

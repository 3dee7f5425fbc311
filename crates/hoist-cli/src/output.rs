//! Human and `--json` renderings of the library's results.

use hoist::{
    Exported, FsckReport, GcReport, ImageMetadata, ImageSummary, Inspection, Pulled, Removed,
    Unpacked,
};

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn human_size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = n as f64;
    let mut i = 0;
    while f >= 1024.0 && i < U.len() - 1 {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{f:.1} {}", U[i])
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}

pub fn inspection(i: &Inspection, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(i);
    }
    println!("Reference:    {}", i.source);
    println!("Digest:       {}", i.digest);
    println!("Media type:   {}", i.media_type);
    println!("Platform:     {}", i.platform);
    println!(
        "Layers:       {} ({}, {} bytes)",
        i.layer_count,
        human_size(i.layers_size),
        i.layers_size
    );
    metadata(&i.metadata);
    Ok(())
}

pub fn unpacked(u: &Unpacked, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(u);
    }
    println!("Reference:    {}", u.source);
    println!("Digest:       {}", u.digest);
    println!("Platform:     {}", u.platform);
    println!(
        "Rootfs:       {} ({} entries, ownership {})",
        u.rootfs.display(),
        u.entries,
        u.ownership
    );
    metadata(&u.metadata);
    Ok(())
}

pub fn exported(e: &Exported, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(e);
    }
    println!("Reference:    {}", e.source);
    println!("Digest:       {}", e.digest);
    println!("Platform:     {}", e.platform);
    println!(
        "Image:        {} ({}, {}, content {})",
        e.path.display(),
        e.format,
        human_size(e.size),
        human_size(e.content_bytes)
    );
    metadata(&e.metadata);
    if !e.devices.is_empty() {
        println!("Devices:      (mount -t erofs -o ro,device=… in this order)");
        for (i, d) in e.devices.iter().enumerate() {
            println!(
                "  {:>3}  {}  {}  {}{}",
                i + 1,
                d.path.display(),
                d.diff_id,
                human_size(d.bytes),
                if d.reused { "  (reused)" } else { "" }
            );
        }
    }
    Ok(())
}

pub fn layer_gc(r: &hoist::LayerGc, dry_run: bool, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(&serde_json::json!({
            "dry_run": dry_run,
            "kept": r.kept,
            "removed": r.removed,
            "bytes_removed": r.bytes_removed,
        }));
    }
    let verb = if dry_run { "Would delete" } else { "Deleted" };
    println!(
        "{verb} {} layer files ({}); kept {}",
        r.removed,
        human_size(r.bytes_removed),
        r.kept
    );
    Ok(())
}

fn metadata(m: &ImageMetadata) {
    println!("Entrypoint:   {}", list(&m.entrypoint));
    println!("Cmd:          {}", list(&m.cmd));
    println!(
        "Working dir:  {}",
        if m.working_dir.is_empty() {
            "-"
        } else {
            &m.working_dir
        }
    );
    println!(
        "User:         {}",
        if m.user.is_empty() { "-" } else { &m.user }
    );
    println!(
        "Stop signal:  {}",
        if m.stop_signal.is_empty() {
            "-"
        } else {
            &m.stop_signal
        }
    );
    println!("Ports:        {}", list(&m.exposed_ports));
    println!("Env:");
    for (k, v) in &m.env {
        println!("  {k}={v}");
    }
    println!("Labels:");
    for (k, v) in &m.labels {
        println!("  {k}={v}");
    }
}

pub fn pulled(p: &Pulled, as_json: bool, quiet: bool) -> anyhow::Result<()> {
    if as_json {
        return json(p);
    }
    if !quiet {
        if p.cached {
            eprintln!("{} ({}) already in the cache", p.source, p.platform);
        } else {
            eprintln!(
                "{} ({}): fetched {} blobs, {}",
                p.source,
                p.platform,
                p.blobs_fetched,
                human_size(p.bytes_fetched)
            );
            if p.bytes_by_host.len() > 1 {
                for (h, n) in &p.bytes_by_host {
                    eprintln!("  {}: {}", h, human_size(*n));
                }
            }
        }
    }
    println!("{}", p.digest);
    Ok(())
}

pub fn images(v: &[ImageSummary], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(&v);
    }
    println!("{:<80} {:<20} {:>10}  PLATFORM", "NAME", "DIGEST", "SIZE");
    for s in v {
        let platform = s
            .image
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let digest = format!("sha256:{}", &s.image.digest.hex()[..12]);
        let names = if s.image.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            s.image.names.clone()
        };
        for n in names {
            println!(
                "{n:<80} {digest:<20} {:>10}  {platform}",
                human_size(s.size)
            );
        }
    }
    Ok(())
}

pub fn fsck(r: &FsckReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(r);
    }
    println!("layout:      {}", r.layout.display());
    println!("blobs:       {} checked", r.blobs_checked);
    println!("images:      {} checked", r.images_checked);
    println!(
        "records:     {} checked (layers inflated again)",
        r.records_checked
    );
    for p in &r.corrupt_blobs {
        println!("corrupt:     {}", p.display());
    }
    for p in &r.stray_files {
        println!("stray file:  {}", p.display());
    }
    for p in &r.incomplete_images {
        println!("incomplete:  {p}");
    }
    for p in &r.bad_records {
        println!(
            "bad record:  {}{}",
            p.display(),
            if r.repaired { " (removed)" } else { "" }
        );
    }
    for p in &r.stale_temp_files {
        println!(
            "stale temp:  {}{}",
            p.display(),
            if r.repaired { " (removed)" } else { "" }
        );
    }
    println!(
        "{}",
        if r.is_clean() {
            "cache is consistent"
        } else if r.repaired {
            "problems found and repaired"
        } else {
            "problems found (run `hoist fsck --repair`)"
        }
    );
    Ok(())
}

pub fn removed(r: &[Removed], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(&r);
    }
    for x in r {
        let what = if x.name.is_empty() {
            x.digest.to_string()
        } else {
            x.name.clone()
        };
        if x.image_removed {
            println!("Removed: {what} (image {})", x.digest);
        } else {
            println!("Untagged: {what}");
        }
    }
    Ok(())
}

pub fn gc(r: &GcReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(r);
    }
    let verb = if r.dry_run { "Would delete" } else { "Deleted" };
    for d in &r.blobs {
        println!("{verb} blob {d}");
    }
    for p in &r.temp_files {
        println!("{verb} temp file {}", p.display());
    }
    println!(
        "{verb} {} blobs ({}) and {} temp files ({}); {} tree metadata files, {} stale leases; {} live leases kept",
        r.blobs.len(),
        human_size(r.blob_bytes),
        r.temp_files.len(),
        human_size(r.temp_bytes),
        r.tree_files.len(),
        r.stale_leases,
        r.live_leases
    );
    Ok(())
}

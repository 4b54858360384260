//! A DynamoDB export of the pipeline's table, read back as the events it stores: the one
//! reader every host uses (the CLI's `audit` and `diff`, and the Spark job's parse workers).
//!
//! AWS writes an export (`ExportTableToPointInTime`, `DYNAMODB_JSON`) under
//! `<prefix>/AWSDynamoDB/<export id>/`:
//!
//! | file | what |
//! | --- | --- |
//! | `manifest-summary.json` | one JSON object: version `2020-06-30`, the table's and the export's ARN, `itemCount`, `outputFormat`, `manifestFilesS3Key` |
//! | `manifest-summary.checksum`, `manifest-files.checksum` | the hex MD5 of the manifest beside it |
//! | `manifest-files.json` | a JSON line per data file: `itemCount`, `md5Checksum` (base64 MD5 of the gzip object), `etag`, `dataFileS3Key` |
//! | `data/<name>.json.gz` | gzip, a JSON line per item: `{"Item":{"pk":{"S":"TRIP#…"},"s_ts":{"N":"…"},…}}` |
//!
//! [`Export::open`] reads and checks the manifests and that every data file the manifest lists
//! is there; [`render_data_file`] checks one data file against its manifest line (MD5, item
//! count), reads its trip items through the table layout ([`tripflow_runtime::item`]) and has
//! the core render their halves as event records (`events.render`). Items that are not trips
//! (the watermark, dirty days, manifests) are counted and left out. Every error names the file
//! it is about and says what to do.
//!
//! [`ExportWriter`] writes the same layout. The pipeline never needs it (AWS writes exports);
//! it is how `tripflow-local export` reads a small table page by page into the layout, and how
//! the tests write an export of DynamoDB Local, which has none.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tripflow_runtime::core::TripEvent;
use tripflow_runtime::item::{Attr, Attributes};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::error::{Error, IoContext};
use crate::input::{Input, InputSource};

/// The summary manifest's file name.
pub const SUMMARY: &str = "manifest-summary.json";
/// The data files' manifest's file name.
pub const FILES: &str = "manifest-files.json";
/// The manifest version this reader knows.
pub const VERSION: &str = "2020-06-30";
/// The only output format whose items this reader can read.
pub const FORMAT: &str = "DYNAMODB_JSON";

/// `manifest-summary.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSummary {
    /// `2020-06-30`.
    pub version: String,
    /// `arn:aws:dynamodb:<region>:<account>:table/<name>/export/<id>`.
    #[serde(default)]
    pub export_arn: Option<String>,
    /// When the export started.
    #[serde(default)]
    pub start_time: Option<String>,
    /// When it ended.
    #[serde(default)]
    pub end_time: Option<String>,
    /// `arn:aws:dynamodb:<region>:<account>:table/<name>`.
    pub table_arn: String,
    /// The table's id.
    #[serde(default)]
    pub table_id: Option<String>,
    /// The point in time the export shows.
    #[serde(default)]
    pub export_time: Option<String>,
    /// The bucket it was written to.
    #[serde(default)]
    pub s3_bucket: Option<String>,
    /// The export prefix asked for.
    #[serde(default)]
    pub s3_prefix: Option<String>,
    /// Server-side encryption.
    #[serde(default)]
    pub s3_sse_algorithm: Option<String>,
    /// The KMS key, if any.
    #[serde(default)]
    pub s3_sse_kms_key_id: Option<String>,
    /// The key of `manifest-files.json`.
    pub manifest_files_s3_key: String,
    /// What the export was billed for.
    #[serde(default)]
    pub billed_size_bytes: Option<u64>,
    /// Items in all data files.
    pub item_count: u64,
    /// `DYNAMODB_JSON` or `ION`.
    pub output_format: String,
    /// `FULL_EXPORT` or `INCREMENTAL_EXPORT` (absent in exports from before incremental ones).
    #[serde(default)]
    pub export_type: Option<String>,
}

impl ManifestSummary {
    /// The table's name, from its ARN.
    pub fn table_name(&self) -> &str {
        self.table_arn
            .rsplit_once(":table/")
            .map_or(self.table_arn.as_str(), |(_, name)| name)
    }
}

/// One line of `manifest-files.json`: a data file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// Items in the file.
    pub item_count: u64,
    /// Base64 MD5 of the gzip object's bytes.
    pub md5_checksum: String,
    /// The object's ETag.
    #[serde(default)]
    pub etag: Option<String>,
    /// The object's key from the bucket's root.
    pub data_file_s3_key: String,
}

impl ManifestFile {
    /// Where the file is relative to the export's directory: `data/<name>`. (The key is
    /// relative to the bucket; a copy of the export elsewhere keeps the `data/` folder.)
    pub fn relative_path(&self) -> String {
        let name = self
            .data_file_s3_key
            .rsplit('/')
            .next()
            .unwrap_or(&self.data_file_s3_key);
        format!("data/{name}")
    }
}

/// Both manifests, read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The summary.
    pub summary: ManifestSummary,
    /// The data files, in the order listed.
    pub files: Vec<ManifestFile>,
}

fn invalid(what: String) -> Error {
    Error::Input(what)
}

impl Manifest {
    /// Reads the two manifests' bytes (`summary_name`, `files_name` name them in errors) and
    /// checks that this is a full `DYNAMODB_JSON` export this reader knows, of `table` when
    /// given, whose data files add up to its item count.
    fn parse(
        summary: &[u8],
        summary_name: &str,
        files: &[u8],
        files_name: &str,
        table: Option<&str>,
    ) -> Result<Manifest, Error> {
        let summary: ManifestSummary = serde_json::from_slice(summary).map_err(|e| {
            invalid(format!(
                "{summary_name}: not a DynamoDB export's summary manifest ({e}); pass the \
                 directory of one export, the one holding {SUMMARY}"
            ))
        })?;
        if summary.version != VERSION {
            return Err(invalid(format!(
                "{summary_name}: manifest version {:?}; this reader knows {VERSION}",
                summary.version
            )));
        }
        if summary.output_format != FORMAT {
            return Err(invalid(format!(
                "{summary_name}: the export's format is {}; export the table again with \
                 --export-format {FORMAT}",
                summary.output_format
            )));
        }
        if let Some(t) = summary
            .export_type
            .as_deref()
            .filter(|t| *t != "FULL_EXPORT")
        {
            return Err(invalid(format!(
                "{summary_name}: a {t} holds changes, not the table; use a full export \
                 (--export-type FULL_EXPORT)"
            )));
        }
        if let Some(want) = table
            && summary.table_name() != want
        {
            return Err(invalid(format!(
                "{summary_name}: this is an export of table {} ({}), not of {want}; pass the \
                 export of the pipeline's table",
                summary.table_name(),
                summary.table_arn
            )));
        }
        let mut listed = Vec::new();
        for (n, line) in files.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let f: ManifestFile = serde_json::from_slice(line).map_err(|e| {
                invalid(format!(
                    "{files_name} line {}: not a data file entry ({e})",
                    n + 1
                ))
            })?;
            listed.push(f);
        }
        let total: u64 = listed.iter().map(|f| f.item_count).sum();
        if total != summary.item_count {
            return Err(invalid(format!(
                "{files_name} lists {} data files with {total} items, but {summary_name} says \
                 the export holds {}: the manifests are from different exports, or one was cut \
                 short; copy the export again",
                listed.len(),
                summary.item_count
            )));
        }
        Ok(Manifest {
            summary,
            files: listed,
        })
    }
}

/// An export on disk, its manifests checked and every data file present.
#[derive(Clone, Debug)]
pub struct Export {
    /// The directory holding `manifest-summary.json`.
    pub dir: PathBuf,
    /// The manifests.
    pub manifest: Manifest,
}

/// Whether `dir` holds an export (its summary manifest, or one export under `AWSDynamoDB/`).
pub fn is_export(dir: &Path) -> bool {
    find_summary(dir).is_ok()
}

/// The directory holding the summary manifest: `dir` itself, or the one export in
/// `dir/AWSDynamoDB/` (a copy of the whole export prefix).
fn find_summary(dir: &Path) -> Result<PathBuf, String> {
    if dir.join(SUMMARY).is_file() {
        return Ok(dir.to_path_buf());
    }
    let under = dir.join("AWSDynamoDB");
    let found: Vec<PathBuf> = fs::read_dir(&under)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join(SUMMARY).is_file())
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "{}: no {SUMMARY} here or in AWSDynamoDB/<export id>/; pass the directory of a \
             DynamoDB export (aws s3 cp --recursive s3://BUCKET/PREFIX/AWSDynamoDB/ID/ DIR)",
            dir.display()
        )),
        _ => Err(format!(
            "{}: {} exports under AWSDynamoDB/; pass the directory of the one to read",
            dir.display(),
            found.len()
        )),
    }
}

/// The hex MD5 of `bytes`.
fn md5_hex(bytes: &[u8]) -> String {
    tripflow_runtime::hex(&Md5::digest(bytes))
}

/// The base64 MD5 of `bytes`, as `manifest-files.json` gives it.
fn md5_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    fs::read(path).io(|| format!("cannot read {} ({what})", path.display()))
}

impl Export {
    /// Opens the export in `dir` (or the one in `dir/AWSDynamoDB/`): reads and checks both
    /// manifests against their `.checksum` files when present, checks the export is of `table`
    /// when given, and that every data file listed is there.
    pub fn open(dir: &Path, table: Option<&str>) -> Result<Export, Error> {
        let export = Export::open_manifests(dir, table)?;
        for f in &export.manifest.files {
            let path = export.path_of(f);
            if !path.is_file() {
                return Err(invalid(format!(
                    "{}: listed in {FILES} ({} items) but missing: the export is incomplete; \
                     copy the export again (every object under its data/ folder)",
                    path.display(),
                    f.item_count
                )));
            }
        }
        Ok(export)
    }

    /// [`Export::open`] without looking for the data files: for a host that reads them from
    /// elsewhere (the Spark job, from S3) and has copied only the manifests here.
    pub fn open_manifests(dir: &Path, table: Option<&str>) -> Result<Export, Error> {
        let dir = find_summary(dir).map_err(invalid)?;
        let summary_path = dir.join(SUMMARY);
        let summary = read_file(&summary_path, "the export's summary manifest")?;
        check_checksum(&summary_path, &summary)?;
        // The summary names manifest-files.json by its key; it sits next to the summary.
        let files_path = dir.join(FILES);
        let files = read_file(
            &files_path,
            "the export's list of data files; a copy of an export must keep it",
        )?;
        check_checksum(&files_path, &files)?;
        let manifest = Manifest::parse(
            &summary,
            &summary_path.display().to_string(),
            &files,
            &files_path.display().to_string(),
            table,
        )?;
        Ok(Export { dir, manifest })
    }

    /// Where a data file is.
    pub fn path_of(&self, f: &ManifestFile) -> PathBuf {
        self.dir.join(f.relative_path())
    }

    /// The data files as replay inputs, in the manifest's order, each named by its path.
    pub fn inputs(&self) -> Vec<Input> {
        self.manifest
            .files
            .iter()
            .map(|f| {
                let path = self.path_of(f);
                Input {
                    name: path.display().to_string(),
                    source: InputSource::ExportData {
                        path,
                        entry: f.clone(),
                    },
                }
            })
            .collect()
    }
}

/// Checks `path`'s bytes against `<stem>.checksum` (hex MD5) beside it, when there is one.
fn check_checksum(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let sum = path.with_extension("checksum");
    let Ok(expected) = fs::read_to_string(&sum) else {
        return Ok(());
    };
    let actual = md5_hex(bytes);
    if !expected.trim().eq_ignore_ascii_case(&actual) {
        return Err(invalid(format!(
            "{}: MD5 {actual} does not match {} ({}): the file changed after the export was \
             written, or was cut short in the copy; copy the export again",
            path.display(),
            sum.display(),
            expected.trim()
        )));
    }
    Ok(())
}

/// What one data file held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataTally {
    /// Trip items read.
    pub trips: u64,
    /// Events rendered (one or two per trip item).
    pub events: u64,
    /// Other items of the pipeline's table (watermark, dirty days, manifests), left out.
    pub other: u64,
}

/// The attributes the trip layout reads; every other attribute of an item (the manifests'
/// long entry lists, TTLs, …) is skipped unread.
const READ: [&str; 10] = [
    tripflow_runtime::item::PK,
    tripflow_runtime::item::SK,
    tripflow_runtime::item::START.ts,
    tripflow_runtime::item::START.fare,
    tripflow_runtime::item::START.extras,
    tripflow_runtime::item::START.src,
    tripflow_runtime::item::END.ts,
    tripflow_runtime::item::END.fare,
    tripflow_runtime::item::END.extras,
    tripflow_runtime::item::END.src,
];

/// A string borrowed from the line when it has no escapes.
type Text<'a> = std::borrow::Cow<'a, str>;

/// One value as DynamoDB JSON (`{"S":"…"}`): its type and, for `S` and `N`, its text.
struct Typed<'a> {
    ty: Text<'a>,
    text: Option<Text<'a>>,
}

/// One line of a data file, `{"Item":{…}}`, with the attributes in [`READ`].
#[derive(Default)]
struct ItemLine<'a> {
    item: bool,
    attrs: Vec<(Text<'a>, Typed<'a>)>,
    /// The first few attribute names, for an error about an item of another table.
    names: Vec<Text<'a>>,
}

/// Deserialises a string, borrowing it when it can.
struct TextSeed;

impl<'de> serde::de::DeserializeSeed<'de> for TextSeed {
    type Value = Text<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Typed<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Typed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a DynamoDB JSON value such as {\"S\": \"…\"}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Typed<'de>, A::Error> {
                let ty = map
                    .next_key_seed(TextSeed)?
                    .ok_or_else(|| serde::de::Error::custom("an empty value"))?;
                let text = if ty == "S" || ty == "N" {
                    Some(map.next_value_seed(TextSeed)?)
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    None
                };
                while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(Typed { ty, text })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for ItemLine<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Line;
        impl<'de> serde::de::Visitor<'de> for Line {
            type Value = ItemLine<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{\"Item\": {…}}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ItemLine<'de>, A::Error> {
                let mut line = ItemLine::default();
                while let Some(key) = map.next_key_seed(TextSeed)? {
                    if key == "Item" {
                        line.item = true;
                        let item = map.next_value::<ItemAttrs<'de>>()?;
                        line.attrs = item.attrs;
                        line.names = item.names;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(line)
            }
        }
        d.deserialize_map(Line)
    }
}

/// The `Item` object: the attributes in [`READ`], and the first few names.
struct ItemAttrs<'a> {
    attrs: Vec<(Text<'a>, Typed<'a>)>,
    names: Vec<Text<'a>>,
}

impl<'de> Deserialize<'de> for ItemAttrs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ItemAttrs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an item: attribute names and DynamoDB JSON values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ItemAttrs<'de>, A::Error> {
                let (mut attrs, mut names) = (Vec::new(), Vec::new());
                while let Some(key) = map.next_key_seed(TextSeed)? {
                    if names.len() < 6 {
                        names.push(key.clone());
                    }
                    if READ.contains(&key.as_ref()) {
                        let value = map.next_value::<Typed<'de>>()?;
                        attrs.push((key, value));
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ItemAttrs { attrs, names })
            }
        }
        d.deserialize_map(V)
    }
}

impl Attributes for ItemLine<'_> {
    fn attr(&self, name: &str) -> Option<Attr<'_>> {
        let (_, v) = self.attrs.iter().find(|(k, _)| k == name)?;
        Some(match (v.ty.as_ref(), &v.text) {
            ("S", Some(s)) => Attr::S(s),
            ("N", Some(n)) => Attr::N(n),
            (other, _) => Attr::Other(other),
        })
    }
}

/// Checks one data file's bytes (`raw`, as stored: gzip) against its manifest line, reads its
/// items and returns the stored events of its trip items as NDJSON event records rendered by
/// the core, trip after trip, start before end. `name` names the file in errors.
pub fn render_data_file<P: CoreProvider>(
    provider: &P,
    name: &str,
    raw: &[u8],
    entry: &ManifestFile,
) -> Result<(Vec<u8>, DataTally), Error> {
    let actual = md5_base64(raw);
    if actual != entry.md5_checksum {
        return Err(invalid(format!(
            "{name}: MD5 {actual} does not match {} in {FILES}: the file changed after the \
             export was written, or was cut short in the copy; copy it again",
            entry.md5_checksum
        )));
    }
    let mut text = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(raw)
        .read_to_end(&mut text)
        .io(|| format!("{name}: not gzip data as an export writes it"))?;
    let mut tally = DataTally::default();
    let mut events: Vec<TripEvent> = Vec::new();
    let mut items = 0u64;
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        items += 1;
        let at = || format!("{name} line {}", n + 1);
        let item: ItemLine<'_> = serde_json::from_slice(line)
            .map_err(|e| invalid(format!("{}: not a DynamoDB JSON item ({e})", at())))?;
        if !item.item {
            return Err(invalid(format!(
                "{}: no \"Item\" object: not an export in {FORMAT}",
                at()
            )));
        }
        let keyed = matches!(item.attr(tripflow_runtime::item::PK), Some(Attr::S(_)))
            && matches!(item.attr(tripflow_runtime::item::SK), Some(Attr::S(_)));
        if !keyed {
            let keys: Vec<&str> = item.names.iter().map(|n| n.as_ref()).collect();
            return Err(invalid(format!(
                "{}: an item without string pk and sk (its attributes: {}): this is not an \
                 export of a tripflow table; pass the export of the pipeline's table",
                at(),
                keys.join(", ")
            )));
        }
        if !item.is_trip() {
            tally.other += 1;
            continue;
        }
        let halves = item
            .events()
            .map_err(|p| invalid(format!("{}: trip item {p}", at())))?;
        tally.trips += 1;
        tally.events += halves.len() as u64;
        events.extend(halves);
    }
    if items != entry.item_count {
        return Err(invalid(format!(
            "{name}: {items} items, but {FILES} lists {}: copy the file again",
            entry.item_count
        )));
    }
    let rendered = provider.session()?.render(&events)?;
    Ok((rendered.into_bytes(), tally))
}

/// Reads a data file whole and renders it (see [`render_data_file`]).
pub fn render_data_path<P: CoreProvider>(
    provider: &P,
    path: &Path,
    entry: &ManifestFile,
) -> Result<(Vec<u8>, DataTally), Error> {
    let raw = read_file(path, "a data file of a table export")?;
    render_data_file(provider, &path.display().to_string(), &raw, entry)
}

/// Reads `reader` whole (a data file's bytes) and renders it.
pub fn render_data_reader<P: CoreProvider>(
    provider: &P,
    name: &str,
    mut reader: impl BufRead,
    entry: &ManifestFile,
) -> Result<(Vec<u8>, DataTally), Error> {
    let mut raw = Vec::new();
    reader
        .read_to_end(&mut raw)
        .io(|| format!("reading {name}"))?;
    render_data_file(provider, name, &raw, entry)
}

/// Writes an export in AWS's layout: items in, `data/*.json.gz` and both manifests (with their
/// `.checksum` files) out.
///
/// Where it departs from what AWS writes: one data file per `items_per_file` items in the order
/// given (AWS writes at least one per partition, items in each partition's hashed key order);
/// data file names are `<n>.json.gz` (AWS: random names); `_started` is not written; `etag`
/// is the MD5 in hex (S3's ETag of a single-part upload) and `billedSizeBytes` is 0. A reader
/// that follows the manifests, as [`Export`] does, reads both the same way.
pub struct ExportWriter {
    dir: PathBuf,
    export_id: String,
    items_per_file: usize,
    summary: ManifestSummary,
    files: Vec<ManifestFile>,
    pending: Vec<u8>,
    pending_items: u64,
}

impl ExportWriter {
    /// Starts writing an export of `table_arn` into `dir` (created; it must not hold an
    /// export already). `export_time` is the point in time it shows (RFC 3339).
    pub fn create(
        dir: &Path,
        table_arn: &str,
        export_time: &str,
        items_per_file: usize,
    ) -> Result<ExportWriter, Error> {
        if dir.join(SUMMARY).exists() {
            return Err(invalid(format!(
                "{}: holds an export already; pass a new directory",
                dir.display()
            )));
        }
        fs::create_dir_all(dir.join("data"))
            .io(|| format!("cannot create {}", dir.join("data").display()))?;
        let export_id = format!(
            "{}-{}",
            export_time
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>(),
            &md5_hex(table_arn.as_bytes())[..8]
        );
        let prefix = format!("AWSDynamoDB/{export_id}");
        Ok(ExportWriter {
            dir: dir.to_path_buf(),
            items_per_file: items_per_file.max(1),
            summary: ManifestSummary {
                version: VERSION.into(),
                export_arn: Some(format!("{table_arn}/export/{export_id}")),
                start_time: Some(export_time.into()),
                end_time: Some(export_time.into()),
                table_arn: table_arn.into(),
                table_id: None,
                export_time: Some(export_time.into()),
                s3_bucket: None,
                s3_prefix: None,
                s3_sse_algorithm: Some("AES256".into()),
                s3_sse_kms_key_id: None,
                manifest_files_s3_key: format!("{prefix}/{FILES}"),
                billed_size_bytes: Some(0),
                item_count: 0,
                output_format: FORMAT.into(),
                export_type: Some("FULL_EXPORT".into()),
            },
            export_id,
            files: Vec::new(),
            pending: Vec::new(),
            pending_items: 0,
        })
    }

    /// Adds one item, as DynamoDB JSON (`{"pk":{"S":"…"},…}`).
    pub fn item(&mut self, item: &serde_json::Map<String, Value>) -> Result<(), Error> {
        serde_json::to_writer(&mut self.pending, &serde_json::json!({ "Item": item }))
            .expect("JSON values serialise");
        self.pending.push(b'\n');
        self.pending_items += 1;
        if self.pending_items as usize >= self.items_per_file {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending_items == 0 {
            return Ok(());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.pending)
            .io(|| "compressing a data file".to_owned())?;
        let raw = gz.finish().io(|| "compressing a data file".to_owned())?;
        let name = format!("{:05}.json.gz", self.files.len());
        let path = self.dir.join("data").join(&name);
        fs::write(&path, &raw).io(|| format!("cannot write {}", path.display()))?;
        self.files.push(ManifestFile {
            item_count: self.pending_items,
            md5_checksum: md5_base64(&raw),
            etag: Some(md5_hex(&raw)),
            data_file_s3_key: format!("AWSDynamoDB/{}/data/{name}", self.export_id),
        });
        self.summary.item_count += self.pending_items;
        self.pending.clear();
        self.pending_items = 0;
        Ok(())
    }

    /// Writes the last data file and the manifests; returns the summary.
    pub fn finish(mut self) -> Result<ManifestSummary, Error> {
        self.flush()?;
        let mut files = Vec::new();
        for f in &self.files {
            serde_json::to_writer(&mut files, f).expect("manifest lines serialise");
            files.push(b'\n');
        }
        let summary = serde_json::to_vec(&self.summary).expect("the summary serialises");
        for (name, bytes) in [(FILES, &files), (SUMMARY, &summary)] {
            let path = self.dir.join(name);
            fs::write(&path, bytes).io(|| format!("cannot write {}", path.display()))?;
            let sum = path.with_extension("checksum");
            fs::write(&sum, md5_hex(bytes)).io(|| format!("cannot write {}", sum.display()))?;
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::NativeCore;
    use tripflow_runtime::core::{EventKind, ParseOutcome, parse_record};

    fn s(v: &str) -> Value {
        serde_json::json!({ "S": v })
    }
    fn n(v: i64) -> Value {
        serde_json::json!({ "N": v.to_string() })
    }
    fn item(pairs: &[(&str, Value)]) -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn written(dir: &Path) -> Export {
        let mut w = ExportWriter::create(
            dir,
            "arn:aws:dynamodb:us-east-1:000000000000:table/tripflow",
            "2026-12-06T10:00:00Z",
            2,
        )
        .unwrap();
        w.item(&item(&[
            ("pk", s("TRIP#a")),
            ("sk", s("TRIP")),
            ("s_ts", n(1_000_000_000)),
            ("s_extras", s(r#"{"vendor_id":2}"#)),
            ("e_ts", n(61_500_000_000)),
            ("e_fare", n(1250)),
            ("opened_hour", n(0)),
        ]))
        .unwrap();
        w.item(&item(&[
            ("pk", s("META")),
            ("sk", s("WATERMARK")),
            ("newest_ns", n(5)),
        ]))
        .unwrap();
        w.item(&item(&[
            ("pk", s("TRIP#b")),
            ("sk", s("TRIP")),
            ("e_ts", n(7)),
            ("opened_hour", n(0)),
        ]))
        .unwrap();
        let summary = w.finish().unwrap();
        assert_eq!(summary.item_count, 3);
        Export::open(dir, Some("tripflow")).unwrap()
    }

    #[test]
    fn an_export_reads_back_as_the_events_it_stores() {
        let dir = tempfile::tempdir().unwrap();
        let export = written(dir.path());
        assert_eq!(export.manifest.files.len(), 2);
        let mut events = Vec::new();
        let mut total = DataTally::default();
        for f in &export.manifest.files {
            let (ndjson, tally) = render_data_path(&NativeCore, &export.path_of(f), f).unwrap();
            total.trips += tally.trips;
            total.events += tally.events;
            total.other += tally.other;
            for line in String::from_utf8(ndjson).unwrap().lines() {
                let ParseOutcome::Accepted(e) = parse_record(line.as_bytes()) else {
                    panic!("{line} is not accepted");
                };
                events.push(e);
            }
        }
        assert_eq!(
            total,
            DataTally {
                trips: 2,
                events: 3,
                other: 1
            }
        );
        let kinds: Vec<(&str, EventKind, Option<i64>, &str)> = events
            .iter()
            .map(|e| (&*e.trip_id, e.kind, e.fare_cents, &*e.extras))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", EventKind::Start, None, r#"{"vendor_id":2}"#),
                ("a", EventKind::End, Some(1250), ""),
                ("b", EventKind::End, None, ""),
            ]
        );
        assert_eq!(events[1].timestamp_ns, 61_500_000_000);
    }

    #[test]
    fn bad_exports_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let export = written(dir.path());
        let first = export.path_of(&export.manifest.files[0]);

        // Another table.
        let e = Export::open(dir.path(), Some("orders"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SUMMARY) && e.contains("table tripflow"), "{e}");

        // A data file whose bytes changed.
        let mut raw = fs::read(&first).unwrap();
        let good = raw.clone();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&first, &raw).unwrap();
        let e = render_data_path(&NativeCore, &first, &export.manifest.files[0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("00000.json.gz") && e.contains("does not match"),
            "{e}"
        );
        fs::write(&first, good).unwrap();

        // A manifest that changed after its checksum.
        let files = dir.path().join(FILES);
        let mut text = fs::read_to_string(&files).unwrap();
        text.push('\n');
        fs::write(&files, &text).unwrap();
        let e = Export::open(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains(FILES) && e.contains("checksum"), "{e}");
        fs::write(files.with_extension("checksum"), md5_hex(text.as_bytes())).unwrap();

        // A data file missing.
        fs::remove_file(&first).unwrap();
        let e = Export::open(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("00000.json.gz") && e.contains("missing"), "{e}");
    }

    #[test]
    fn items_of_another_table_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ExportWriter::create(
            dir.path(),
            "arn:aws:dynamodb:us-east-1:000000000000:table/tripflow",
            "2026-12-06T10:00:00Z",
            10,
        )
        .unwrap();
        w.item(&item(&[("OrderId", n(7)), ("total", n(5))]))
            .unwrap();
        w.finish().unwrap();
        let export = Export::open(dir.path(), None).unwrap();
        let f = &export.manifest.files[0];
        let e = render_data_path(&NativeCore, &export.path_of(f), f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("00000.json.gz line 1") && e.contains("not an export of a tripflow"),
            "{e}"
        );
    }
}

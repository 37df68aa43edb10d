//! [`Labels`]: the labels of master codes (agencies, businesses,
//! information names, items) from the masters distributed with the prefix
//! list, for the CSV files of an export. A code the masters do not list —
//! or every code, when the box holds no verified distribution — has an
//! empty label; the code itself is always written.

use std::collections::HashMap;

use ifrelay_proto::{AgencyCode, BusinessCode, InfoNameCode, ItemCode, Masters};

/// Code → label lookups; empty when the box knows no masters.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    agencies: HashMap<String, String>,
    businesses: HashMap<String, String>,
    info_names: HashMap<String, String>,
    /// By information name, then item: item codes are per information
    /// name in the item master.
    items: HashMap<String, HashMap<String, String>>,
}

impl Labels {
    /// The labels of `masters`.
    pub fn from_masters(masters: &Masters) -> Self {
        Labels {
            agencies: rows(masters.agencies.iter().map(|r| (r.code.as_str(), &r.label))),
            businesses: rows(
                masters
                    .businesses
                    .iter()
                    .map(|r| (r.code.as_str(), &r.label)),
            ),
            info_names: rows(
                masters
                    .info_names
                    .iter()
                    .map(|r| (r.code.as_str(), &r.label)),
            ),
            items: masters.items.iter().fold(HashMap::new(), |mut items, r| {
                items
                    .entry(r.info_name.as_str().to_owned())
                    .or_insert_with(HashMap::new)
                    .insert(r.item.as_str().to_owned(), r.label.clone());
                items
            }),
        }
    }

    /// The labels of a stored distribution (`version`, its CBOR), after
    /// verifying it again against the pinned `roots` as every start does:
    /// labels from an altered distribution are never written.
    ///
    /// # Errors
    /// Why the distribution does not decode or verify.
    pub fn from_stored(bytes: &[u8], roots: &[ifrelay_proto::RootKey]) -> Result<Self, String> {
        let d: ifrelay_proto::Distribution =
            ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        let trusted =
            ifrelay_proto::distribution::verify_stored(&d, roots).map_err(|e| e.to_string())?;
        Ok(Labels::from_masters(&trusted.fields.masters))
    }

    /// Whether any label is known.
    pub fn is_empty(&self) -> bool {
        self.agencies.is_empty()
            && self.businesses.is_empty()
            && self.info_names.is_empty()
            && self.items.is_empty()
    }

    pub fn agency(&self, code: &AgencyCode) -> &str {
        self.agencies.get(code.as_str()).map_or("", String::as_str)
    }

    pub fn business(&self, code: &BusinessCode) -> &str {
        self.businesses
            .get(code.as_str())
            .map_or("", String::as_str)
    }

    pub fn info_name(&self, code: &InfoNameCode) -> &str {
        self.info_names
            .get(code.as_str())
            .map_or("", String::as_str)
    }

    pub fn item(&self, info_name: &InfoNameCode, item: &ItemCode) -> &str {
        self.items
            .get(info_name.as_str())
            .and_then(|items| items.get(item.as_str()))
            .map_or("", String::as_str)
    }
}

fn rows<'a>(rows: impl Iterator<Item = (&'a str, &'a String)>) -> HashMap<String, String> {
    rows.map(|(code, label)| (code.to_owned(), label.clone()))
        .collect()
}

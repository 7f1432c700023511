//! Plain-text output for the admin commands: a table with columns sized to
//! their widest cell, a list of labelled fields, and USD amounts.

/// A table with a header row. Cells are left-aligned unless their column
/// was marked numeric.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    numeric: Vec<usize>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            numeric: Vec::new(),
        }
    }

    /// Right-aligns these columns (counts, money).
    pub fn numeric(mut self, columns: &[usize]) -> Table {
        self.numeric = columns.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = " ".repeat(w - width(cell));
                if i > 0 {
                    line.push_str("  ");
                }
                if self.numeric.contains(&i) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let label_width = pairs.iter().map(|(label, _)| width(label)).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(label, value)| format!("{label}{}  {value}\n", " ".repeat(label_width - width(label))))
        .collect()
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// USD with cents, and with up to six decimals when there are fractions of
/// a cent (amounts are kept in micro-dollars).
pub fn usd(amount: f64) -> String {
    let micros = (amount * 1e6).round();
    let text = format!("{:.6}", micros / 1e6);
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let fraction = fraction.trim_end_matches('0');
    format!("${whole}.{fraction:0<2}")
}

/// A budget limit: USD, or `none` when the period is not limited.
pub fn limit(amount: Option<f64>) -> String {
    amount.map(usd).unwrap_or_else(|| "none".into())
}

/// A gateway timestamp (RFC 3339) shortened to the minute, in UTC.
pub fn time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut table = Table::new(&["ID", "NAME", "COST"]).numeric(&[2]);
        table.row(vec!["acme".into(), "Acme Corp".into(), "$5.00".into()]);
        table.row(vec!["b".into(), "".into(), "$123.45".into()]);
        assert_eq!(
            table.render(),
            "ID    NAME          COST\n\
             acme  Acme Corp    $5.00\n\
             b                $123.45\n"
        );
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn fields_align_their_values() {
        assert_eq!(
            fields(&[("id", "acme".into()), ("daily", "$5.00".into())]),
            "id     acme\ndaily  $5.00\n"
        );
    }

    #[test]
    fn usd_shows_cents_and_fractions_of_a_cent() {
        for (amount, text) in [
            (0.0, "$0.00"),
            (5.0, "$5.00"),
            (5.5, "$5.50"),
            (100.25, "$100.25"),
            (0.0123, "$0.0123"),
            (0.000001, "$0.000001"),
            (1.2345678, "$1.234568"),
            (1e9, "$1000000000.00"),
        ] {
            assert_eq!(usd(amount), text, "{amount}");
        }
        assert_eq!(limit(None), "none");
        assert_eq!(limit(Some(2.0)), "$2.00");
    }

    #[test]
    fn times_are_shortened_to_utc_minutes() {
        assert_eq!(time("2025-03-01T12:34:56.789+00:00"), "2025-03-01 12:34 UTC");
        assert_eq!(time("2025-03-01T14:34:56+02:00"), "2025-03-01 12:34 UTC");
        assert_eq!(time("not a time"), "not a time");
    }
}

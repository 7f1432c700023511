//! The small compiled-in lexicon the signals read: each word belongs to one
//! or more classes (a verb that starts a task, a kind of deliverable, a domain).
//!
//! Words are grouped by class so a reader can review a list at a glance; the
//! lookup table is built once, as a small open-addressing hash table.

use std::sync::OnceLock;

/// Word classes, as bits so one word can carry several (`"design"` is both a
/// build verb and a heavy deliverable).
pub(crate) mod class {
    /// Verbs that commission real engineering or reasoning work.
    pub const BUILD: u32 = 1 << 0;
    /// Verbs that ask for something to be written or produced.
    pub const PRODUCE: u32 = 1 << 1;
    /// Verbs that reshape supplied text rather than create something new.
    pub const TRANSFORM: u32 = 1 << 2;
    /// Words that open a question or a lookup.
    pub const QUESTION: u32 = 1 << 3;
    /// Words that ask for explanation, comparison or judgement.
    pub const REASON: u32 = 1 << 4;
    /// Large deliverables: systems, proofs, protocols, strategies.
    pub const HEAVY: u32 = 1 << 5;
    /// Mid-sized deliverables: a script, a class, an essay, a plan.
    pub const MEDIUM: u32 = 1 << 6;
    /// Small answers: a word, a name, a number, a one-liner.
    pub const LIGHT: u32 = 1 << 7;
    /// Words that add a requirement or constraint.
    pub const CONSTRAINT: u32 = 1 << 8;
    /// Hard engineering domains: distribution, concurrency, security, scale.
    pub const SYSTEMS: u32 = 1 << 9;
    /// Mathematical vocabulary.
    pub const MATH: u32 = 1 << 10;
    /// Programming languages, tools and code nouns.
    pub const CODE: u32 = 1 << 11;
    /// Explicit difficulty or stakes.
    pub const HARD: u32 = 1 << 12;
    /// Explicit ease or brevity.
    pub const EASY: u32 = 1 << 13;
    /// Words after which a verb still reads as an instruction ("please write",
    /// "can you build", "I need you to design").
    pub const LEAD: u32 = 1 << 14;
}

const BUILD: &str =
    "architect audit benchmark build construct debug derive design develop diagnose engineer \
    formalize formalise implement migrate model optimize optimise parallelize port profile prove \
    refactor reimplement show solve specify verify";

const PRODUCE: &str =
    "add compose create draft generate give help make plan prepare propose set setup suggest write";

const TRANSFORM: &str =
    "capitalize classify clean condense convert correct count extract fix format list name paraphrase \
    proofread rename reformat rephrase reword rewrite shorten simplify sort spell summarize \
    summarise tag translate transcribe turn";

const QUESTION: &str =
    "am are can could define did do does how is was were what what's whats when where which who who's \
    whom whose will would";

const REASON: &str =
    "analyse analyze argue assess assumptions compare contrast critique discuss evaluate explain \
    implications interpret justify predict pros reasoning recommend review tradeoff tradeoffs \
    trade-off trade-offs why";

const HEAVY: &str = "allocator architecture backend collector compiler consensus design engine framework \
    implementation infrastructure interpreter kernel microservices platform pipeline proof proofs \
    protocol runtime scheduler solver specification strategy study system systems";

const MEDIUM: &str =
    "algorithm analysis api app application article cache chart class client database essay \
    evaluation middleware migration model module op-ed parser plan policy proposal queue report \
    schema script server service story test tests tree workflow";

const LIGHT: &str =
    "abbreviation acronym capital command definition example fact haiku joke limerick name names \
    number one-liner oneliner phrase pronunciation sentence shortcut slogan snippet synonym synonyms \
    tagline title translation tweet word words";

const CONSTRAINT: &str =
    "across avoid both cannot can't constraint constraints each ensure every exactly except guarantee \
    handle handles handling include including must never only preserving requirement requirements \
    respecting should support supporting tolerate tolerates under while within without";

const SYSTEMS: &str =
    "atomic atomics backpressure byzantine concurrency concurrent consistency consistent corruption \
    crash deadlock distributed downtime exactly-once failover fault faults idempotency idempotent \
    invariants isolation latency leak liveness lock-free multi-tenant nondeterminism ordering \
    partition partitions pipelining race recovery regions replicas replication sandbox sandboxing \
    scalability scalable sharding skew tenant tenants threat throughput vulnerabilities \
    vulnerability";

const MATH: &str =
    "asymptotic bound bounds coefficient combinatorics conjecture converge converges corollary \
    countable decidable derivative diverges eigenvalue eigenvalues epsilon equation equations \
    expectation finite group homomorphism inequality infinitely integer integers integral irrational \
    isomorphic lemma limit markov matrix modulo polynomial prime primes probability real series \
    stationary stochastic subgroup theorem topology undecidable variance";

const CODE: &str =
    "async bash c++ compile compiler css django docker dockerfile endpoint express fastapi function \
    go golang graphql haskell html java javascript json kotlin kubernetes lean lisp node node.js \
    numpy pandas php postgres pytorch python react regex ruby rust scala solidity spark sql swift \
    terraform tokio typescript yaml";

const HARD: &str =
    "carefully complete comprehensive correctness efficient efficiently formal formally heisenbug \
    intermittent nontrivial optimal precisely production rigorous rigorously robust scratch subtle \
    thorough thoroughly tricky verified";

const EASY: &str =
    "approximately basic brief briefly easy eli5 just quick quickly roughly short simple simply tldr";

const LEAD: &str = "also and can could first let's lets me now please pls plz then to would you";

/// Open-addressing hash table of every listed word with all its classes.
/// Built once; a lookup hashes the word and usually compares one entry.
struct Table {
    slots: Vec<Option<(&'static str, u32)>>,
    mask: usize,
}

/// FNV-1a: tiny, and good enough for a few hundred short keys.
fn hash(word: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in word {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Truncation is intended: only the low bits pick a slot.
    h as usize
}

impl Table {
    fn build() -> Table {
        let groups: [(&'static str, u32); 15] = [
            (BUILD, class::BUILD),
            (PRODUCE, class::PRODUCE),
            (TRANSFORM, class::TRANSFORM),
            (QUESTION, class::QUESTION),
            (REASON, class::REASON),
            (HEAVY, class::HEAVY),
            (MEDIUM, class::MEDIUM),
            (LIGHT, class::LIGHT),
            (CONSTRAINT, class::CONSTRAINT),
            (SYSTEMS, class::SYSTEMS),
            (MATH, class::MATH),
            (CODE, class::CODE),
            (HARD, class::HARD),
            (EASY, class::EASY),
            (LEAD, class::LEAD),
        ];
        let words: usize = groups.iter().map(|(list, _)| list.split_whitespace().count()).sum();
        // At most a quarter full, so probe chains stay short.
        let size = (words * 4).next_power_of_two();
        let mut table = Table { slots: vec![None; size], mask: size - 1 };
        for (list, bits) in groups {
            for word in list.split_whitespace() {
                table.insert(word, bits);
            }
        }
        table
    }

    fn insert(&mut self, word: &'static str, bits: u32) {
        let mut i = hash(word.as_bytes()) & self.mask;
        loop {
            match &mut self.slots[i] {
                Some((w, b)) if *w == word => {
                    *b |= bits;
                    return;
                }
                Some(_) => i = (i + 1) & self.mask,
                empty @ None => {
                    *empty = Some((word, bits));
                    return;
                }
            }
        }
    }

    fn get(&self, word: &[u8]) -> u32 {
        let mut i = hash(word) & self.mask;
        while let Some((w, bits)) = self.slots[i] {
            if w.as_bytes() == word {
                return bits;
            }
            i = (i + 1) & self.mask;
        }
        0
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::build)
}

/// Classes of a lower-case ASCII word, trying a plural/third-person `-s`
/// stripped form when the word itself is not listed. 0 when unknown.
pub(crate) fn classes(word: &[u8]) -> u32 {
    if word.len() < 2 {
        return 0;
    }
    let table = table();
    match table.get(word) {
        0 if word.len() > 3 && word.ends_with(b"s") && !word.ends_with(b"ss") => {
            table.get(&word[..word.len() - 1])
        }
        found => found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_resolve_to_their_classes() {
        let cases: [(&str, u32); 9] = [
            ("implement", class::BUILD),
            ("design", class::BUILD | class::HEAVY),
            ("summarize", class::TRANSFORM),
            ("what's", class::QUESTION),
            ("compilers", class::HEAVY | class::CODE),
            ("builds", class::BUILD),
            ("lock-free", class::SYSTEMS),
            ("process", 0),
            ("banana", 0),
        ];
        for (word, want) in cases {
            assert_eq!(classes(word.as_bytes()), want, "{word}");
        }
    }

    #[test]
    fn every_listed_word_is_lower_case_ascii() {
        for (word, _) in table().slots.iter().flatten() {
            assert!(word.bytes().all(|b| !b.is_ascii_uppercase() && b.is_ascii()), "{word}");
        }
    }
}

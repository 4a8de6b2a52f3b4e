//! The regular expressions of `=~` and `!~`: a subset of Java's syntax, matched against the
//! whole string (Java's `Matcher.matches()`) by a Thompson NFA, so matching takes time linear
//! in the length of the string whatever the pattern (no catastrophic backtracking).
//!
//! Supported: literals; `.` (any character but a line terminator); `[...]` and `[^...]` with
//! ranges and the escapes below; `\d \D \w \W \s \S`; `\t \n \r \f \a \e \0oct \xhh \x{h..}
//! \uhhhh \cX`; `\Q...\E` quoting; any other escaped non-letter stands for itself; `^ $ \A \z
//! \Z \b \B`; groups `(...)`, `(?:...)`, `(?<name>...)`; alternation `|`; quantifiers `* + ?
//! {n} {n,} {n,m}`, also reluctant (`*?`: the same as greedy for a whole-string match).
//! Rejected with an error: backreferences, lookaround, inline flags, possessive quantifiers,
//! `\p{...}` classes and class unions/intersections.

/// A compiled pattern.
#[derive(Clone, Debug)]
pub(crate) struct Regex {
    program: Vec<Inst>,
}

/// A pattern that cannot be compiled; `offset` is a byte offset into the pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegexError {
    pub offset: usize,
    pub message: String,
}

/// Repetitions are unrolled; this bounds the size of the unrolled program.
const MAX_PROGRAM: usize = 10_000;

#[derive(Clone, Debug)]
enum Inst {
    Char(char),
    Class(Class),
    Assert(Assertion),
    Split(usize, usize),
    Jump(usize),
    Match,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Assertion {
    Start,
    End,
    WordBoundary,
    NotWordBoundary,
}

/// A set of characters: sorted, non-overlapping inclusive ranges, possibly negated.
#[derive(Clone, Debug, Default)]
struct Class {
    ranges: Vec<(char, char)>,
    negated: bool,
}

impl Class {
    fn of(ranges: &[(char, char)], negated: bool) -> Class {
        let mut class = Class { ranges: ranges.to_vec(), negated };
        class.normalize();
        class
    }

    fn normalize(&mut self) {
        self.ranges.sort_unstable();
        let mut merged: Vec<(char, char)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if (lo as u32) <= (last.1 as u32).saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
    }

    fn contains(&self, c: char) -> bool {
        let inside = self.ranges.binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        inside.is_ok() != self.negated
    }

    /// The ranges of this class without negation (used to fold `\D` into `[...]`).
    fn positive_ranges(&self) -> Vec<(char, char)> {
        if !self.negated {
            return self.ranges.clone();
        }
        let mut out = Vec::new();
        let mut next = 0u32;
        for &(lo, hi) in &self.ranges {
            if (lo as u32) > next {
                push_range(&mut out, next, lo as u32 - 1);
            }
            next = hi as u32 + 1;
        }
        if next <= char::MAX as u32 {
            push_range(&mut out, next, char::MAX as u32);
        }
        out
    }
}

/// Pushes `lo..=hi`, skipping the surrogate gap that `char` cannot represent.
fn push_range(out: &mut Vec<(char, char)>, lo: u32, hi: u32) {
    let pieces = [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)];
    for (a, b) in pieces {
        if a <= b
            && let (Some(a), Some(b)) = (char::from_u32(a), char::from_u32(b))
        {
            out.push((a, b));
        }
    }
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];
const LINE_TERMINATORS: &[(char, char)] = &[('\n', '\n'), ('\r', '\r'), ('\u{85}', '\u{85}'), ('\u{2028}', '\u{2029}')];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The pattern's syntax tree.
#[derive(Debug)]
enum Node {
    Empty,
    Char(char),
    Class(Class),
    Assert(Assertion),
    Concat(Vec<Node>),
    Alternation(Vec<Node>),
    Repeat { node: Box<Node>, min: u32, max: Option<u32> },
}

struct Parser<'p> {
    pattern: &'p str,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

type Parsed<T> = Result<T, RegexError>;

impl<'p> Parser<'p> {
    fn error<T>(&self, offset: usize, message: impl Into<String>) -> Parsed<T> {
        Err(RegexError { offset, message: message.into() })
    }

    fn peek(&self) -> Option<char> {
        self.pattern[self.pos..].chars().next()
    }

    fn peek_is(&self, s: &str) -> bool {
        self.pattern[self.pos..].starts_with(s)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn alternation(&mut self) -> Parsed<Node> {
        let mut branches = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.bump();
            branches.push(self.concat()?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap_or(Node::Empty) } else { Node::Alternation(branches) })
    }

    fn concat(&mut self) -> Parsed<Node> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            if self.peek_is("\\Q") {
                self.pos += 2;
                let rest = &self.pattern[self.pos..];
                let end = rest.find("\\E").unwrap_or(rest.len());
                items.extend(rest[..end].chars().map(Node::Char));
                self.pos += (end + 2).min(rest.len());
                continue;
            }
            items.push(self.repeat()?);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    fn repeat(&mut self) -> Parsed<Node> {
        let atom = self.atom()?;
        let at = self.pos;
        let (min, max) = match self.peek() {
            Some('{') => self.counted()?,
            Some(c @ ('*' | '+' | '?')) => {
                self.bump();
                if c == '*' {
                    (0, None)
                } else if c == '+' {
                    (1, None)
                } else {
                    (0, Some(1))
                }
            }
            _ => return Ok(atom),
        };
        if let Node::Assert(_) = atom {
            return self.error(at, format!("nothing to repeat before `{}`", &self.pattern[at..self.pos]));
        }
        match self.peek() {
            Some('?') => {
                self.bump();
            }
            Some('+') => return self.error(self.pos, "possessive quantifiers are not supported"),
            _ => {}
        }
        if max.is_some_and(|m| m < min) {
            return self.error(at, "the maximum of a repetition is smaller than its minimum");
        }
        Ok(Node::Repeat { node: Box::new(atom), min, max })
    }

    /// `{n}`, `{n,}` or `{n,m}`, consuming it.
    fn counted(&mut self) -> Parsed<(u32, Option<u32>)> {
        let at = self.pos;
        let rest = &self.pattern[self.pos..];
        let Some(close) = rest.find('}') else {
            return self.error(at, "unclosed repetition `{`");
        };
        let body = &rest[1..close];
        let number = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) { None } else { s.parse().ok() }
        };
        let parsed = match body.split_once(',') {
            None => number(body).map(|n| (n, Some(n))),
            Some((lo, "")) => number(lo).map(|n| (n, None)),
            Some((lo, hi)) => number(lo).zip(number(hi)).map(|(a, b)| (a, Some(b))),
        };
        let Some(counts) = parsed else {
            return self.error(at, "a repetition is `{n}`, `{n,}` or `{n,m}`");
        };
        self.pos += close + 1;
        Ok(counts)
    }

    fn atom(&mut self) -> Parsed<Node> {
        let at = self.pos;
        let Some(c) = self.bump() else {
            return self.error(at, "unexpected end of pattern");
        };
        Ok(match c {
            '.' => Node::Class(Class::of(LINE_TERMINATORS, true)),
            '^' => Node::Assert(Assertion::Start),
            '$' => Node::Assert(Assertion::End),
            '[' => Node::Class(self.class(at)?),
            '(' => self.group(at)?,
            '\\' => self.escape(at, false)?,
            '*' | '+' | '?' | '{' => return self.error(at, format!("nothing to repeat before `{c}`")),
            c => Node::Char(c),
        })
    }

    fn group(&mut self, at: usize) -> Parsed<Node> {
        if self.peek() == Some('?') {
            if self.peek_is("?:") {
                self.pos += 2;
            } else if self.peek_is("?<") && !self.peek_is("?<=") && !self.peek_is("?<!") {
                let rest = &self.pattern[self.pos + 2..];
                let name_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
                if name_len == 0 || !rest[name_len..].starts_with('>') {
                    return self.error(at, "a named group is `(?<name>...)`");
                }
                self.pos += 2 + name_len + 1;
            } else if self.peek_is("?=") || self.peek_is("?!") || self.peek_is("?<") {
                return self.error(at, "lookaround is not supported");
            } else {
                return self.error(at, "inline flags and special groups are not supported");
            }
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(at, "groups nested too deeply");
        }
        let inner = self.alternation()?;
        self.depth -= 1;
        if self.bump() != Some(')') {
            return self.error(at, "unclosed group `(`");
        }
        Ok(inner)
    }

    /// An escape after `\` (at `at`); `in_class` for the forms that mean something else there.
    fn escape(&mut self, at: usize, in_class: bool) -> Parsed<Node> {
        let Some(c) = self.bump() else {
            return self.error(at, "pattern ends with a lone `\\`");
        };
        let ch = |c: char| Ok(Node::Char(c));
        match c {
            'd' => Ok(Node::Class(Class::of(DIGIT, false))),
            'D' => Ok(Node::Class(Class::of(DIGIT, true))),
            'w' => Ok(Node::Class(Class::of(WORD, false))),
            'W' => Ok(Node::Class(Class::of(WORD, true))),
            's' => Ok(Node::Class(Class::of(SPACE, false))),
            'S' => Ok(Node::Class(Class::of(SPACE, true))),
            't' => ch('\t'),
            'n' => ch('\n'),
            'r' => ch('\r'),
            'f' => ch('\x0c'),
            'a' => ch('\x07'),
            'e' => ch('\x1b'),
            '0' => {
                let digits: String = self.pattern[self.pos..].chars().take_while(|c| c.is_digit(8)).take(3).collect();
                let value = u32::from_str_radix(&digits, 8).ok().filter(|v| *v <= 0o377);
                let Some(value) = value else {
                    return self.error(at, "`\\0` needs one to three octal digits");
                };
                self.pos += digits.len();
                ch(char::from_u32(value).unwrap_or('\0'))
            }
            'x' => {
                let (hex, len) = if self.peek() == Some('{') {
                    let rest = &self.pattern[self.pos + 1..];
                    let end = rest.find('}').unwrap_or(0);
                    (&rest[..end], end + 2)
                } else {
                    let rest = &self.pattern[self.pos..];
                    (rest.get(..2).unwrap_or(""), 2)
                };
                self.hex_char(at, hex, len)
            }
            'u' => {
                let rest = &self.pattern[self.pos..];
                self.hex_char(at, rest.get(..4).unwrap_or(""), 4)
            }
            'c' => match self.bump() {
                Some(x) if x.is_ascii() => ch(char::from(x as u8 ^ 0x40)),
                _ => self.error(at, "`\\c` needs an ASCII character"),
            },
            'b' if !in_class => Ok(Node::Assert(Assertion::WordBoundary)),
            'B' if !in_class => Ok(Node::Assert(Assertion::NotWordBoundary)),
            'A' if !in_class => Ok(Node::Assert(Assertion::Start)),
            'z' | 'Z' if !in_class => Ok(Node::Assert(Assertion::End)),
            '1'..='9' => self.error(at, "backreferences are not supported"),
            'p' | 'P' => self.error(at, "`\\p{...}` classes are not supported"),
            c if c.is_ascii_alphanumeric() => self.error(at, format!("unknown escape `\\{c}`")),
            c => ch(c),
        }
    }

    fn hex_char(&mut self, at: usize, hex: &str, len: usize) -> Parsed<Node> {
        let value = if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        } else {
            None
        };
        match value {
            Some(c) => {
                self.pos += len;
                Ok(Node::Char(c))
            }
            None => self.error(at, "invalid hexadecimal escape"),
        }
    }

    /// A class after its `[` (at `at`).
    fn class(&mut self, at: usize) -> Parsed<Class> {
        let mut class = Class::default();
        if self.peek() == Some('^') {
            self.bump();
            class.negated = true;
        }
        let mut first = true;
        loop {
            let item_at = self.pos;
            let Some(c) = self.bump() else {
                return self.error(at, "unclosed character class `[`");
            };
            let lo = match c {
                ']' if !first => break,
                '[' => return self.error(item_at, "nested character classes are not supported"),
                '&' if self.peek() == Some('&') => {
                    return self.error(item_at, "class intersections are not supported");
                }
                '\\' => match self.escape(item_at, true)? {
                    Node::Char(c) => c,
                    Node::Class(inner) => {
                        class.ranges.extend(inner.positive_ranges());
                        first = false;
                        continue;
                    }
                    _ => return self.error(item_at, "this escape cannot appear in a character class"),
                },
                c => c,
            };
            first = false;
            let is_range = self.peek() == Some('-') && !self.pattern[self.pos + 1..].starts_with(']');
            if !is_range || self.pos + 1 >= self.pattern.len() {
                class.ranges.push((lo, lo));
                continue;
            }
            self.bump();
            let hi_at = self.pos;
            let hi = match self.bump() {
                Some('\\') => match self.escape(hi_at, true)? {
                    Node::Char(c) => c,
                    _ => return self.error(hi_at, "a range must end with a single character"),
                },
                Some('[') => return self.error(hi_at, "nested character classes are not supported"),
                Some(c) => c,
                None => return self.error(at, "unclosed character class `[`"),
            };
            if hi < lo {
                return self.error(item_at, format!("illegal character range `{lo}-{hi}`"));
            }
            class.ranges.push((lo, hi));
        }
        class.normalize();
        Ok(class)
    }
}

struct Compiler {
    program: Vec<Inst>,
}

impl Compiler {
    fn push(&mut self, inst: Inst) -> Result<usize, RegexError> {
        if self.program.len() >= MAX_PROGRAM {
            return Err(RegexError {
                offset: 0,
                message: "pattern too large once its repetitions are expanded".into(),
            });
        }
        self.program.push(inst);
        Ok(self.program.len() - 1)
    }

    fn compile(&mut self, node: &Node) -> Result<(), RegexError> {
        match node {
            Node::Empty => {}
            Node::Char(c) => {
                self.push(Inst::Char(*c))?;
            }
            Node::Class(class) => {
                self.push(Inst::Class(class.clone()))?;
            }
            Node::Assert(a) => {
                self.push(Inst::Assert(*a))?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.compile(item)?;
                }
            }
            Node::Alternation(branches) => {
                let mut jumps = Vec::new();
                for (i, branch) in branches.iter().enumerate() {
                    if i + 1 < branches.len() {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.compile(branch)?;
                        jumps.push(self.push(Inst::Jump(0))?);
                        let next = self.program.len();
                        self.program[split] = Inst::Split(split + 1, next);
                    } else {
                        self.compile(branch)?;
                    }
                }
                let end = self.program.len();
                for j in jumps {
                    self.program[j] = Inst::Jump(end);
                }
            }
            Node::Repeat { node, min, max } => {
                for _ in 0..*min {
                    self.compile(node)?;
                }
                match max {
                    None => {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.compile(node)?;
                        self.push(Inst::Jump(split))?;
                        let end = self.program.len();
                        self.program[split] = Inst::Split(split + 1, end);
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.compile(node)?;
                        }
                        let end = self.program.len();
                        for s in splits {
                            self.program[s] = Inst::Split(s + 1, end);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Regex {
    pub(crate) fn new(pattern: &str) -> Result<Regex, RegexError> {
        let mut parser = Parser { pattern, pos: 0, depth: 0 };
        let tree = parser.alternation()?;
        if parser.pos < pattern.len() {
            // `alternation` stops only at the end or at a `)` without its `(`.
            return Err(RegexError { offset: parser.pos, message: "unmatched `)`".into() });
        }
        let mut compiler = Compiler { program: Vec::new() };
        compiler.compile(&tree)?;
        compiler.push(Inst::Match)?;
        Ok(Regex { program: compiler.program })
    }

    /// Whether the pattern matches all of `text`.
    pub(crate) fn is_full_match(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let mut current = Threads::new(self.program.len());
        let mut next = Threads::new(self.program.len());
        let mut stack = Vec::new();
        self.add(&mut current, &mut stack, 0, &chars, 0);
        for (pos, &c) in chars.iter().enumerate() {
            if current.list.is_empty() {
                return false;
            }
            for &pc in &current.list {
                let advances = match &self.program[pc] {
                    Inst::Char(want) => *want == c,
                    Inst::Class(class) => class.contains(c),
                    _ => false,
                };
                if advances {
                    self.add(&mut next, &mut stack, pc + 1, &chars, pos + 1);
                }
            }
            std::mem::swap(&mut current, &mut next);
            next.clear();
        }
        current.list.iter().any(|&pc| matches!(self.program[pc], Inst::Match))
    }

    /// Adds `pc` and everything reachable from it without consuming a character at `pos`.
    fn add(&self, threads: &mut Threads, stack: &mut Vec<usize>, pc: usize, chars: &[char], pos: usize) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if !threads.insert(pc) {
                continue;
            }
            match &self.program[pc] {
                Inst::Jump(to) => stack.push(*to),
                Inst::Split(a, b) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Inst::Assert(assertion) if holds(*assertion, chars, pos) => stack.push(pc + 1),
                _ => {}
            }
        }
    }
}

fn holds(assertion: Assertion, chars: &[char], pos: usize) -> bool {
    let before = pos.checked_sub(1).and_then(|p| chars.get(p)).is_some_and(|c| is_word_char(*c));
    let after = chars.get(pos).is_some_and(|c| is_word_char(*c));
    match assertion {
        Assertion::Start => pos == 0,
        Assertion::End => pos == chars.len(),
        Assertion::WordBoundary => before != after,
        Assertion::NotWordBoundary => before == after,
    }
}

/// A set of program counters with insertion order (a sparse set).
struct Threads {
    list: Vec<usize>,
    seen: Vec<bool>,
}

impl Threads {
    fn new(size: usize) -> Threads {
        Threads { list: Vec::with_capacity(size), seen: vec![false; size] }
    }

    fn insert(&mut self, pc: usize) -> bool {
        if self.seen[pc] {
            return false;
        }
        self.seen[pc] = true;
        self.list.push(pc);
        true
    }

    fn clear(&mut self) {
        for &pc in &self.list {
            self.seen[pc] = false;
        }
        self.list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, text: &str, want: bool) {
        let re = Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e:?}"));
        assert_eq!(re.is_full_match(text), want, "{pattern:?} on {text:?}");
    }

    #[test]
    fn matches_whole_strings() {
        let table: &[(&str, &str, bool)] = &[
            ("pool[12]", "pool1", true),
            ("pool[12]", "pool3", false),
            ("pool[12]", "pool12", false),
            ("pool", "pool1", false),
            ("pool", "xpool", false),
            ("", "", true),
            ("", "a", false),
            ("a*", "", true),
            ("a*", "aaaa", true),
            ("a+", "", false),
            ("a?b", "b", true),
            ("a?b", "ab", true),
            ("a?b", "aab", false),
            ("pool.*", "pool-a.b", true),
            (".", "\n", false),
            ("a|b|cd", "cd", true),
            ("a|b|cd", "c", false),
            ("(ab)+", "ababab", true),
            ("(ab)+", "ababa", false),
            ("(?:ab|c){2}", "abc", true),
            ("(?<g>x)y", "xy", true),
            ("a{2,3}", "a", false),
            ("a{2,3}", "aa", true),
            ("a{2,3}", "aaa", true),
            ("a{2,3}", "aaaa", false),
            ("a{2,}", "aaaaa", true),
            ("a{0}", "", true),
            ("a*?b", "aab", true),
            ("[^0-9]+", "abc", true),
            ("[^0-9]+", "ab1", false),
            ("[a-cx-z]*", "abzx", true),
            ("[-a]+", "-a-", true),
            ("[a-]+", "-a-", true),
            ("[]a]+", "]a", true),
            ("[\\d.]+", "1.5", true),
            ("[\\D]", "x", true),
            ("[\\D]", "5", false),
            ("\\d+", "2024", true),
            ("\\w+", "pool_1", true),
            ("\\w+", "pool-1", false),
            ("\\s", " ", true),
            ("\\S", " ", false),
            ("pool\\.1", "pool.1", true),
            ("pool\\.1", "poolx1", false),
            ("\\Qa.b\\E", "a.b", true),
            ("\\Qa.b\\E", "axb", false),
            ("\\Qa.b", "a.b", true),
            ("^pool$", "pool", true),
            ("a^b", "ab", false),
            ("\\bpool\\b", "pool", true),
            ("a\\Bb", "ab", true),
            ("\\x41\\u0042\\x{43}", "ABC", true),
            ("\\t", "\t", true),
            ("(a*)*b", "aaab", true),
            ("(a|)*", "aa", true),
            ("()*x", "x", true),
            ("é.", "éè", true),
            ("(a*)*(b*)*c", &"ab".repeat(5000), false),
        ];
        for (pattern, text, want) in table {
            check(pattern, text, *want);
        }
    }

    #[test]
    fn is_linear_on_hostile_patterns() {
        // Exponential for a backtracking matcher.
        let text = format!("{}b", "a".repeat(5_000));
        check("(a+)+c", &text, false);
        check("(a|a)*c", &text, false);
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        let table: &[(&str, usize, &str)] = &[
            ("(a", 0, "unclosed group"),
            ("a)", 1, "unmatched `)`"),
            ("[ab", 0, "unclosed character class"),
            ("*a", 0, "nothing to repeat"),
            ("a**", 2, "nothing to repeat"),
            ("^*", 1, "nothing to repeat"),
            ("a{2", 1, "unclosed repetition"),
            ("a{x}", 1, "a repetition is"),
            ("a{3,2}", 1, "smaller than its minimum"),
            ("a++", 2, "possessive"),
            ("(a)\\1", 3, "backreferences"),
            ("(?=a)", 0, "lookaround"),
            ("(?i)a", 0, "inline flags"),
            ("\\p{Alpha}", 0, "\\p{"),
            ("\\k", 0, "unknown escape"),
            ("[z-a]", 1, "illegal character range"),
            ("[a[b]]", 2, "nested"),
            ("[a&&b]", 2, "intersections"),
            ("a\\", 1, "lone"),
            ("(a{1000}){1000}", 0, "too large"),
            ("a{2}{3}", 4, "nothing to repeat"),
        ];
        for (pattern, offset, message) in table {
            let err = Regex::new(pattern).expect_err(pattern);
            assert_eq!(err.offset, *offset, "{pattern:?}: {err:?}");
            assert!(err.message.contains(message), "{pattern:?}: {err:?}");
        }
    }
}

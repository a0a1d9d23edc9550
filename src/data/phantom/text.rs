//! Findings reports and VQA questions written from varied templates, and the
//! phantom's vocabulary of medical terms (finding, anatomy, laterality,
//! size) for curation. Finding terms are taken from the CheXpert labeler's
//! mention phrases (`data/vocab/chexpert_phrases`) wherever one fits.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::{FindingKind, Lobe, Side};

/// What the text of one study is written from.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub kind: Option<FindingKind>,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    /// Lesion area, share of the image.
    pub area: f64,
    /// Cardiomegaly only: heart width relative to normal.
    pub heart_scale: Option<f32>,
}

/// One VQA question in SLAKE's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    pub answer: String,
    /// `"OPEN"` or `"CLOSED"`.
    pub answer_type: &'static str,
    /// SLAKE's `content_type`: Abnormality, Position, Size, Organ, Modality.
    pub content_type: &'static str,
}

/// The written text of a study: report, questions, and the phrases of the
/// report that name the lesion (the finding term and its location).
#[derive(Clone, Debug)]
pub struct StudyText {
    pub report: String,
    pub questions: Vec<Question>,
    pub keywords: Vec<String>,
    pub size_word: Option<&'static str>,
    pub location: Option<String>,
}

/// The open answer to "What abnormality is seen?" for a normal study.
pub const NO_ABNORMALITY: &str = "no abnormality";

/// Size words by kind and lesion area (share of the image).
pub fn size_word(kind: FindingKind, area: f64, heart_scale: Option<f32>) -> &'static str {
    use FindingKind::*;
    if kind == Cardiomegaly {
        let s = heart_scale.unwrap_or(1.5);
        return if s < 1.43 {
            "mild"
        } else if s < 1.52 {
            "moderate"
        } else {
            "marked"
        };
    }
    let class = if area < 0.015 {
        0
    } else if area < 0.05 {
        1
    } else {
        2
    };
    match (kind, class) {
        (Nodule, 0) if area < 0.005 => "tiny",
        (Atelectasis, 0) => "mild",
        (Atelectasis | Consolidation, 2) => "extensive",
        (_, 0) => "small",
        (_, 1) => "moderate",
        _ => "large",
    }
}

/// The location answer ("right upper lobe", "left lung base", ...).
pub fn location(kind: FindingKind, side: Option<Side>, lobe: Option<Lobe>) -> String {
    match (kind, side, lobe) {
        (FindingKind::Cardiomegaly, _, _) => "heart".to_string(),
        (FindingKind::PleuralEffusion, Some(s), _) => format!("{} lung base", s.name()),
        (FindingKind::Pneumothorax, Some(s), _) => format!("{} hemithorax", s.name()),
        (_, Some(s), Some(l)) => format!("{} {} lobe", s.name(), l.name()),
        (_, Some(s), None) => format!("{} lung", s.name()),
        (_, None, _) => "chest".to_string(),
    }
}

/// Finding terms used in reports, by kind and whether the lesion is large.
fn report_terms(kind: FindingKind, large: bool) -> &'static [&'static str] {
    use FindingKind::*;
    match (kind, large) {
        (Nodule, false) => &["nodule", "nodular opacity", "nodular density"],
        (Nodule, true) => &["mass"],
        (Consolidation, _) => &[
            "consolidation",
            "airspace consolidation",
            "airspace opacity",
            "airspace disease",
        ],
        (PleuralEffusion, _) => &["pleural effusion"],
        (Pneumothorax, _) => &["pneumothorax"],
        (Cardiomegaly, _) => &["cardiomegaly", "cardiac enlargement"],
        (Atelectasis, false) => &[
            "atelectasis",
            "plate-like atelectasis",
            "subsegmental atelectasis",
        ],
        (Atelectasis, true) => &["atelectasis", "collapse"],
    }
}

/// Noun phrases for the presence questions ("Is there {np}?").
fn presence_phrases(kind: FindingKind) -> &'static [&'static str] {
    use FindingKind::*;
    match kind {
        Nodule => &[
            "a nodule",
            "a pulmonary nodule",
            "a lung nodule",
            "a nodular opacity",
        ],
        Consolidation => &[
            "consolidation",
            "airspace consolidation",
            "airspace opacity",
        ],
        PleuralEffusion => &["a pleural effusion", "pleural fluid", "an effusion"],
        Pneumothorax => &["a pneumothorax"],
        Cardiomegaly => &["cardiomegaly", "an enlarged heart", "cardiac enlargement"],
        Atelectasis => &["atelectasis"],
    }
}

/// Report sentence templates per kind. Slots: {size} {term} {side} {lobe}.
fn finding_templates(kind: FindingKind) -> &'static [&'static str] {
    use FindingKind::*;
    match kind {
        Nodule => &[
            "There is a {size} {term} in the {side} {lobe} lobe.",
            "A {size} {term} is seen in the {side} {lobe} lobe.",
            "{Size} {term} projecting over the {side} {lobe} lobe.",
            "The {side} {lobe} lobe contains a {size} {term}.",
            "{Size} {side} {lobe} lobe {term}.",
        ],
        Consolidation => &[
            "There is {size} {term} in the {side} {lobe} lobe.",
            "{Size} {term} is present in the {side} {lobe} lobe.",
            "The {side} {lobe} lobe shows {size} {term}.",
            "{Size} {side} {lobe} lobe {term}, concerning for pneumonia.",
            "Patchy {size} {term} involving the {side} {lobe} lobe.",
        ],
        PleuralEffusion => &[
            "There is a {size} {side} {term}.",
            "{Size} {side} {term}.",
            "A {size} {side} {term} blunts the costophrenic angle.",
            "{Size} {term} at the {side} lung base.",
            "The {side} costophrenic angle is obscured by a {size} {term}.",
        ],
        Pneumothorax => &[
            "There is a {size} {side} {term}.",
            "A {size} {side} apical {term} is seen with a visible pleural line.",
            "{Size} {side} {term}.",
            "A {size} {term} is present in the {side} hemithorax.",
            "{Size} {term} on the {side}, with the pleural line displaced from the chest wall.",
        ],
        Cardiomegaly => &[
            "There is {size} {term}.",
            "{Size} {term}.",
            "The heart is enlarged, in keeping with {size} {term}.",
            "{Size} {term} is noted.",
        ],
        Atelectasis => &[
            "There is {size} {term} in the {side} {lobe} lobe.",
            "{Size} {side} {lobe} lobe {term}.",
            "Linear opacity in the {side} {lobe} lobe, consistent with {size} {term}.",
            "The {side} {lobe} lobe shows {size} {term}.",
        ],
    }
}

const HEART_NORMAL: &[&str] = &[
    "The heart size is normal.",
    "Heart size is within normal limits.",
    "The cardiac silhouette is normal in size.",
    "Normal heart size.",
];
const MEDIASTINUM_NORMAL: &[&str] = &[
    "The mediastinal contours are normal.",
    "The mediastinal silhouette is unremarkable.",
    "The hilar and mediastinal contours are within normal limits.",
    "Mediastinal contours are unremarkable.",
];
const BONES: &[&str] = &[
    "The osseous structures are intact.",
    "No acute osseous abnormality.",
    "Visualized bones are unremarkable.",
    "The bony thorax is intact.",
];
const LUNGS_CLEAR: &[&str] = &[
    "The lungs are clear.",
    "The lungs are clear bilaterally.",
    "Both lungs are well expanded and clear.",
    "The lungs are well inflated and clear.",
];
const IMPRESSION_NORMAL: &[&str] = &[
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary process.",
];
/// Negative statements and the kinds they mention (public so that the
/// finding extractor's round-trip test knows what each report negates).
pub const NEGATIVES: &[(&str, &[FindingKind])] = &[
    (
        "No pleural effusion or pneumothorax.",
        &[FindingKind::PleuralEffusion, FindingKind::Pneumothorax],
    ),
    ("There is no pneumothorax.", &[FindingKind::Pneumothorax]),
    (
        "No pleural effusion is seen.",
        &[FindingKind::PleuralEffusion],
    ),
    ("No focal consolidation.", &[FindingKind::Consolidation]),
];

fn pick<'a, R: Rng + ?Sized>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("")
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn fill(template: &str, size: &str, term: &str, side: &str, lobe: &str) -> String {
    let s = template
        .replace("{Size}", &capitalise(size))
        .replace("{size}", size)
        .replace("{term}", term)
        .replace("{side}", side)
        .replace("{lobe}", lobe);
    capitalise(&s)
}

/// Write the report and questions of one study.
pub fn write<R: Rng + ?Sized>(rng: &mut R, facts: &Facts) -> StudyText {
    let mut sentences: Vec<String> = Vec::new();
    let mut keywords = Vec::new();
    let mut size = None;
    let mut loc = None;
    match facts.kind {
        Some(kind) => {
            let sw = size_word(kind, facts.area, facts.heart_scale);
            size = Some(sw);
            let large = facts.area >= 0.05;
            let term = pick(rng, report_terms(kind, large));
            let template = pick(rng, finding_templates(kind));
            let side = facts.side.map(|s| s.name()).unwrap_or("");
            let lobe = facts.lobe.map(|l| l.name()).unwrap_or("");
            let finding = fill(template, sw, term, side, lobe);
            keywords.push(term.to_string());
            let l = location(kind, facts.side, facts.lobe);
            if let (Some(s), Some(lb)) = (facts.side, facts.lobe) {
                keywords.push(format!("{} {} lobe", s.name(), lb.name()));
            } else if let Some(s) = facts.side {
                keywords.push(s.name().to_string());
            }
            loc = Some(l);
            let mut rest: Vec<String> = Vec::new();
            if kind == FindingKind::Cardiomegaly {
                rest.push("The mediastinal contours are otherwise unremarkable.".into());
                rest.push(pick(rng, LUNGS_CLEAR).into());
            } else {
                rest.push(pick(rng, HEART_NORMAL).into());
                if rng.random::<f32>() < 0.6 {
                    rest.push(pick(rng, MEDIASTINUM_NORMAL).into());
                }
                if let Some(s) = facts.side {
                    let other = s.opposite().name();
                    rest.push(if rng.random::<bool>() {
                        format!("The {other} lung is clear.")
                    } else {
                        format!("The {other} lung is well expanded and clear.")
                    });
                }
            }
            if rng.random::<f32>() < 0.5 {
                let allowed: Vec<&str> = NEGATIVES
                    .iter()
                    .filter(|(_, ks)| !ks.contains(&kind))
                    .map(|(t, _)| *t)
                    .collect();
                rest.push(pick(rng, &allowed).into());
            }
            if rng.random::<f32>() < 0.7 {
                rest.push(pick(rng, BONES).into());
            }
            rest.shuffle(rng);
            // The finding leads most reports; sometimes it follows one line.
            let at = if rng.random::<f32>() < 0.75 { 0 } else { 1 };
            sentences.extend(rest);
            sentences.insert(at.min(sentences.len()), finding);
        }
        None => {
            sentences.push(pick(rng, LUNGS_CLEAR).into());
            sentences.push(pick(rng, HEART_NORMAL).into());
            if rng.random::<f32>() < 0.6 {
                sentences.push(pick(rng, MEDIASTINUM_NORMAL).into());
            }
            let neg = NEGATIVES.choose(rng).map(|(t, _)| *t).unwrap_or("");
            sentences.push(neg.into());
            if rng.random::<f32>() < 0.6 {
                sentences.push(pick(rng, BONES).into());
            }
            sentences.shuffle(rng);
            if rng.random::<f32>() < 0.5 {
                sentences.push(pick(rng, IMPRESSION_NORMAL).into());
            }
        }
    }
    let report = sentences.join(" ");
    let questions = questions(rng, facts, size, loc.as_deref());
    StudyText {
        report,
        questions,
        keywords,
        size_word: size,
        location: loc,
    }
}

fn closed(q: String, yes: bool, content: &'static str) -> Question {
    Question {
        question: q,
        answer: if yes { "Yes" } else { "No" }.into(),
        answer_type: "CLOSED",
        content_type: content,
    }
}

fn open(q: String, a: String, content: &'static str) -> Question {
    Question {
        question: q,
        answer: a,
        answer_type: "OPEN",
        content_type: content,
    }
}

const PRESENCE: &[&str] = &[
    "Is there {np}?",
    "Does this radiograph show {np}?",
    "Is {np} present?",
    "Can {np} be seen in this image?",
    "Does the patient have {np}?",
    "Is there evidence of {np} in this chest x-ray?",
    "Is {np} visible?",
];
const WHAT: &[&str] = &[
    "What abnormality is seen?",
    "What is the main finding in this image?",
    "What disease is shown in this chest x-ray?",
    "What abnormality does this radiograph show?",
    "Which abnormality is present?",
    "What is the most likely diagnosis?",
];
const WHERE: &[&str] = &[
    "Where is the lesion?",
    "Where is the abnormality located?",
    "Where is the {name} located?",
    "In which region is the abnormality?",
    "Where is the abnormality?",
];

fn presence<R: Rng + ?Sized>(rng: &mut R, kind: FindingKind, yes: bool) -> Question {
    let np = pick(rng, presence_phrases(kind));
    let q = capitalise(&pick(rng, PRESENCE).replace("{np}", np));
    closed(q, yes, "Abnormality")
}

fn questions<R: Rng + ?Sized>(
    rng: &mut R,
    facts: &Facts,
    size: Option<&str>,
    loc: Option<&str>,
) -> Vec<Question> {
    let mut qs = Vec::new();
    let what = pick(rng, WHAT).to_string();
    match facts.kind {
        Some(kind) => {
            qs.push(open(what, kind.name().into(), "Abnormality"));
            qs.push(presence(rng, kind, true));
            let others: Vec<FindingKind> = FindingKind::ALL
                .iter()
                .copied()
                .filter(|k| *k != kind)
                .collect();
            if let Some(other) = others.choose(rng) {
                qs.push(presence(rng, *other, false));
            }
            let name = kind.name();
            let wq = pick(rng, WHERE).replace("{name}", name);
            qs.push(open(wq, loc.unwrap_or("chest").into(), "Position"));
            // Two more from a pool.
            let mut pool: Vec<Question> = Vec::new();
            pool.push(normality(rng, false));
            if let Some(side) = facts.side {
                let asked = if rng.random::<bool>() {
                    side
                } else {
                    side.opposite()
                };
                let a = asked.name();
                let t = pick(
                    rng,
                    &[
                        "Is the abnormality on the {a} side?",
                        "Is the lesion in the {a} lung?",
                        "Is the {name} on the {a}?",
                        "Is the {a} lung affected?",
                        "Does the {a} lung show an abnormality?",
                    ],
                );
                let q = t.replace("{a}", a).replace("{name}", name);
                pool.push(closed(q, asked == side, "Position"));
                if rng.random::<bool>() {
                    let t = pick(
                        rng,
                        &[
                            "Which lung is affected?",
                            "Which lung is abnormal?",
                            "Which lung contains the {name}?",
                        ],
                    );
                    pool.push(open(
                        t.replace("{name}", name),
                        format!("{} lung", side.name()),
                        "Position",
                    ));
                } else {
                    let t = pick(
                        rng,
                        &[
                            "Which side is the abnormality on?",
                            "On which side is the {name}?",
                        ],
                    );
                    pool.push(open(
                        t.replace("{name}", name),
                        side.name().into(),
                        "Position",
                    ));
                }
            }
            if let Some(sw) = size {
                let t = pick(
                    rng,
                    &[
                        "How large is the lesion?",
                        "What is the size of the abnormality?",
                        "How big is the {name}?",
                    ],
                );
                pool.push(open(t.replace("{name}", name), sw.into(), "Size"));
            }
            pool.push(heart_enlarged(rng, kind == FindingKind::Cardiomegaly));
            pool.push(modality(rng));
            pool.shuffle(rng);
            qs.extend(pool.into_iter().take(2));
        }
        None => {
            qs.push(open(what, NO_ABNORMALITY.into(), "Abnormality"));
            let mut kinds = FindingKind::ALL.to_vec();
            kinds.shuffle(rng);
            for k in kinds.iter().take(2) {
                qs.push(presence(rng, *k, false));
            }
            qs.push(normality(rng, true));
            let extra = match rng.random_range(0..3) {
                0 => heart_enlarged(rng, false),
                1 => modality(rng),
                _ => closed(
                    pick(rng, &["Are the lungs clear?", "Do the lungs look clear?"]).into(),
                    true,
                    "Organ",
                ),
            };
            qs.push(extra);
        }
    }
    qs
}

fn normality<R: Rng + ?Sized>(rng: &mut R, normal: bool) -> Question {
    if rng.random::<bool>() {
        let q = pick(
            rng,
            &[
                "Is this chest x-ray normal?",
                "Does this image look normal?",
                "Is the study normal?",
                "Is this radiograph normal?",
            ],
        );
        closed(q.into(), normal, "Abnormality")
    } else {
        let q = pick(
            rng,
            &[
                "Is there any abnormality in this image?",
                "Are there abnormal findings?",
                "Is anything abnormal in this chest radiograph?",
            ],
        );
        closed(q.into(), !normal, "Abnormality")
    }
}

fn heart_enlarged<R: Rng + ?Sized>(rng: &mut R, yes: bool) -> Question {
    let q = pick(
        rng,
        &[
            "Is the heart enlarged?",
            "Is the cardiac silhouette enlarged?",
            "Is the heart size abnormal?",
        ],
    );
    closed(q.into(), yes, "Organ")
}

fn modality<R: Rng + ?Sized>(rng: &mut R) -> Question {
    if rng.random::<bool>() {
        let q = pick(
            rng,
            &[
                "What modality is used to take this image?",
                "What kind of image is this?",
            ],
        );
        open(q.into(), "X-Ray".into(), "Modality")
    } else {
        let q = pick(rng, &["Is this a CT scan?", "Is this an MRI?"]);
        closed(q.into(), false, "Modality")
    }
}

/// The phantom's vocabulary: every medical term its reports and answers use,
/// with its category (`finding`, `anatomy`, `laterality`, `size`), for the
/// curation stage's keyword matching and same-category misdiagnosis draws.
pub fn vocabulary() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut add = |terms: &[&str], cat: &str| {
        for t in terms {
            if !v.iter().any(|(x, _)| x == t) {
                v.push((t.to_string(), cat.to_string()));
            }
        }
    };
    for kind in FindingKind::ALL {
        add(&[kind.name()], "finding");
        add(report_terms(kind, false), "finding");
        add(report_terms(kind, true), "finding");
        let bare: Vec<&str> = presence_phrases(kind)
            .iter()
            .map(|p| {
                p.strip_prefix("a ")
                    .or_else(|| p.strip_prefix("an "))
                    .unwrap_or(p)
            })
            .collect();
        add(&bare, "finding");
    }
    add(&["pneumonia", "opacity", "linear opacity"], "finding");
    add(
        &[
            "upper lobe",
            "middle lobe",
            "lower lobe",
            "lung base",
            "hemithorax",
            "apical",
            "lung",
            "heart",
            "cardiac silhouette",
            "mediastinal contours",
            "costophrenic angle",
            "pleural line",
            "chest wall",
            "osseous structures",
        ],
        "anatomy",
    );
    add(&["left", "right"], "laterality");
    add(
        &[
            "tiny",
            "small",
            "mild",
            "moderate",
            "large",
            "extensive",
            "marked",
        ],
        "size",
    );
    v
}

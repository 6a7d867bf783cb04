/// British → American spellings, the spelling step of ``EnglishTextNormalizer``.
///
/// A curated list, not Whisper's full table of about 1,700 words: the -our words (colour, honour,
/// neighbour, …) and their derived forms, the common -ise/-isation verbs, -yse verbs, -re nouns
/// (centre, metre, theatre, …), doubled-l inflections (travelled, cancelling, …), -ence nouns
/// (defence, licence, …), -ogue words, and common single words (grey, tyre, aluminium, programme,
/// cheque, …). Words outside the table are left alone.
public enum EnglishSpellings {
    /// Replaces each whitespace-separated word found in ``table`` with its American spelling.
    public static func americanize(_ text: String) -> String {
        text.split(separator: " ", omittingEmptySubsequences: true)
            .map { table[String($0)] ?? String($0) }
            .joined(separator: " ")
    }

    /// The table: British spelling → American spelling (lower case).
    public static let table: [String: String] = {
        var t: [String: String] = [:]

        // -our -> -or, with derived forms
        let ourStems = ["colo", "favo", "hono", "labo", "neighbo", "behavio", "humo", "rumo", "flavo",
                        "harbo", "vapo", "vigo", "armo", "savo", "endeavo", "odo", "parlo", "splendo",
                        "valo", "rigo", "cando", "clamo", "tumo", "ardo", "fervo", "ranco", "dolo"]
        let ourEndings = ["our", "ours", "oured", "ouring", "ourful", "ourfully", "ourable", "ourably",
                          "ourite", "ourites", "ouritism", "ourless", "ourer", "ourers", "ourhood",
                          "ourhoods", "ourly", "oury", "ourist", "ourists", "ourings"]
        for stem in ourStems {
            let base = stem.dropLast()  // "colo" -> "col": colour -> color
            for ending in ourEndings {
                t[base + ending] = base + "or" + ending.dropFirst(3)
            }
        }
        t["dishonour"] = "dishonor"; t["dishonoured"] = "dishonored"; t["dishonourable"] = "dishonorable"
        t["discolour"] = "discolor"; t["discoloured"] = "discolored"; t["unfavourable"] = "unfavorable"
        t["misbehaviour"] = "misbehavior"; t["honourably"] = "honorably"

        // -ise / -isation -> -ize / -ization
        let iseStems = ["real", "organ", "recogn", "apolog", "critic", "emphas", "summar", "priorit",
                        "special", "util", "minim", "maxim", "memor", "categor", "author", "character",
                        "standard", "modern", "visual", "final", "normal", "optim", "symbol", "sympath",
                        "civil", "custom", "econom", "fertil", "harmon", "industrial", "legal", "mobil",
                        "neutral", "penal", "popular", "privat", "revolution", "scrutin", "stabil",
                        "steril", "subsid", "synchron", "theor", "tranquil", "vocal", "agon", "antagon",
                        "capital", "central", "colon", "commercial", "computer", "crystall", "democrat",
                        "dramat", "energ", "equal", "external", "familiar", "fantas", "formal", "global",
                        "hospital", "human", "ideal", "immun", "initial", "internal", "ital", "jeopard",
                        "local", "magnet", "marginal", "mechan", "mesmer", "moral", "national", "natural",
                        "patron", "personal", "polar", "politic", "pressur", "public", "rational",
                        "regular", "rhapsod", "romantic", "sanit", "sensation", "sensit", "social",
                        "stigmat", "terror", "trivial", "urban", "vandal", "vapor", "victim", "western",
                        "random", "digit", "colonial"]
        let iseEndings = ["ise", "ised", "ises", "ising", "isation", "isations", "iser", "isers", "isable"]
        for stem in iseStems {
            for ending in iseEndings {
                t[stem + ending] = stem + "iz" + ending.dropFirst(2)
            }
        }

        // -yse -> -yze
        for stem in ["anal", "paral", "catal", "hydrol", "dial", "electrol"] {
            for (b, a) in [("yse", "yze"), ("ysed", "yzed"), ("yses", "yzes"), ("ysing", "yzing"), ("yser", "yzer")] {
                t[stem + b] = stem + a
            }
        }
        t["analyses"] = nil  // plural of analysis in both spellings

        // -re -> -er
        for stem in ["cent", "theat", "met", "lit", "fib", "calib", "spect", "somb", "meag", "lust",
                     "sab", "scept", "mit", "och", "sepulch", "goit", "reconnoit"] {
            for (b, a) in [("re", "er"), ("res", "ers"), ("red", "ered"), ("ring", "ering")] {
                t[stem + b] = stem + a
            }
        }
        t["manoeuvre"] = "maneuver"; t["manoeuvres"] = "maneuvers"; t["manoeuvred"] = "maneuvered"
        t["manoeuvring"] = "maneuvering"
        t["kilometre"] = "kilometer"; t["kilometres"] = "kilometers"; t["centimetre"] = "centimeter"
        t["centimetres"] = "centimeters"; t["millimetre"] = "millimeter"; t["millimetres"] = "millimeters"

        // doubled l before an ending
        for stem in ["travel", "cancel", "label", "model", "fuel", "marvel", "level", "signal", "counsel",
                     "channel", "tunnel", "quarrel", "total", "equal", "dial", "duel", "funnel", "grovel",
                     "jewel", "libel", "pedal", "rival", "shovel", "snivel", "swivel", "tranquil",
                     "yodel", "enamel", "panel", "spiral", "stencil", "cudgel", "bevel", "chisel", "gruel"] {
            for ending in ["led", "ling", "ler", "lers"] {
                t[stem + ending] = stem + ending.dropFirst()
            }
        }
        t["marvellous"] = "marvelous"; t["marvellously"] = "marvelously"; t["jewellery"] = "jewelry"
        t["counsellor"] = "counselor"; t["counsellors"] = "counselors"; t["woollen"] = "woolen"
        t["tranquillity"] = "tranquility"

        // single l where British doubles it, and other single words
        let words: [String: String] = [
            "enrol": "enroll", "enrols": "enrolls", "enrolment": "enrollment", "fulfil": "fulfill",
            "fulfils": "fulfills", "fulfilment": "fulfillment", "instil": "instill", "distil": "distill",
            "skilful": "skillful", "skilfully": "skillfully", "wilful": "willful", "wilfully": "willfully",
            "defence": "defense", "defences": "defenses", "offence": "offense", "offences": "offenses",
            "licence": "license", "licences": "licenses", "pretence": "pretense",
            "catalogue": "catalog", "catalogues": "catalogs", "catalogued": "cataloged",
            "dialogue": "dialog", "dialogues": "dialogs", "analogue": "analog", "prologue": "prolog",
            "monologue": "monolog", "epilogue": "epilog",
            "grey": "gray", "greys": "grays", "greyer": "grayer", "greyish": "grayish", "greying": "graying",
            "tyre": "tire", "tyres": "tires", "plough": "plow", "ploughs": "plows", "ploughed": "plowed",
            "aluminium": "aluminum", "cheque": "check", "cheques": "checks", "programme": "program",
            "programmes": "programs", "ageing": "aging", "judgement": "judgment", "judgements": "judgments",
            "acknowledgement": "acknowledgment", "aeroplane": "airplane", "aeroplanes": "airplanes",
            "anaesthetic": "anesthetic", "anaesthesia": "anesthesia", "encyclopaedia": "encyclopedia",
            "paediatric": "pediatric", "paediatrician": "pediatrician", "oestrogen": "estrogen",
            "foetus": "fetus", "haemorrhage": "hemorrhage", "haemoglobin": "hemoglobin",
            "leukaemia": "leukemia", "diarrhoea": "diarrhea", "oesophagus": "esophagus",
            "archaeology": "archeology", "mediaeval": "medieval", "moustache": "mustache",
            "moustaches": "mustaches", "pyjamas": "pajamas", "storey": "story", "storeys": "stories",
            "sceptic": "skeptic", "sceptical": "skeptical", "scepticism": "skepticism", "kerb": "curb",
            "draught": "draft", "draughts": "drafts", "draughty": "drafty", "gaol": "jail",
            "mould": "mold", "moulds": "molds", "mouldy": "moldy", "smoulder": "smolder",
            "smouldering": "smoldering", "moult": "molt", "artefact": "artifact", "artefacts": "artifacts",
            "cosy": "cozy", "cosier": "cozier", "practise": "practice", "practised": "practiced",
            "practises": "practices", "practising": "practicing", "licenced": "licensed",
            "pyjama": "pajama", "sulphur": "sulfur", "sulphate": "sulfate", "nought": "naught",
            "speciality": "specialty", "specialities": "specialties",
            "cosiness": "coziness", "behove": "behoove", "manoeuvrable": "maneuverable",
        ]
        for (b, a) in words { t[b] = a }
        return t
    }()
}

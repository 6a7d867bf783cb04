import XCTest
@testable import Evaluation

final class EnglishTextNormalizerTests: XCTestCase {
    let normalizer = EnglishTextNormalizer()

    func check(_ input: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(normalizer.normalize(input), expected, "input: \(input)", file: file, line: line)
    }

    func testLowercaseAndPunctuation() {
        check("Hello, World!", "hello world")
        check("Hello... world?!  Yes;   no: maybe.", "hello world yes no maybe")
        check("rock-and-roll", "rock and roll")
        check("\"Quoted\" (aside) text", "quoted text")
        check("", "")
        check("   ", "")
    }

    func testBracketsAndParenthesesRemoved() {
        check("[MUSIC] hello <unk> there (laughs)", "hello there")
        check("keep (drop this) keep", "keep keep")
    }

    func testFillersRemoved() {
        check("Um, I uh think hmm so. Mhm, mm, mmm.", "i think so")
        check("umbrella human", "umbrella human")  // fillers only as whole words
    }

    func testContractions() {
        check("I won't go, I can't stop", "i will not go i can not stop")
        check("let's see, y'all", "let us see you all")
        check("we're, they'll, I've, I'm, you'd, isn't", "we are they will i have i am you would is not")
        check("I'm gonna, wanna, gotta", "i am going to want to got to")
        check("it’s curly", "it is curly")  // typographic apostrophe
        check("it 's spaced", "it is spaced")
    }

    func testApostropheSAsWhisperDoes() {
        check("It's John's car", "it is john is car")
        check("She's been there. He'd been ok. He's got it.", "she has been there he had been ok he has got it")
        check("the dogs' bone, o'clock", "the dogs bone o clock")  // other apostrophes become spaces
    }

    func testTitles() {
        check("Mr. Smith and Dr. Jones met Mrs. Brown", "mister smith and doctor jones met missus brown")
        check("St. Louis", "saint louis")
    }

    func testDiacritics() {
        check("Café naïve Straße Ærø façade", "cafe naive strasse aero facade")
        check("Łódź", "lodz")
    }

    func testBritishSpellings() {
        check("The colour of the centre", "the color of the center")
        check("She organised a programme; we travelled", "she organized a program we traveled")
        check("favourite neighbours analysed the theatre's catalogue",
              "favorite neighbors analyzed the theater is catalog")
        check("grey tyres", "gray tires")
        check("color center", "color center")  // American spellings untouched
    }

    func testCardinals() {
        check("twenty one", "21")
        check("one hundred and five", "105")
        check("two thousand and twenty", "2020")
        check("three million two hundred thousand", "3200000")
        check("nineteen ninety nine", "1999")
        check("one two three", "123")
        check("forty-two", "42")
        check("I have twenty-five apples and three pears", "i have 25 apples and 3 pears")
        check("one thousand two hundred thirty four", "1234")
        check("twenty nineteen", "2019")
        check("two thousand nineteen", "2019")
    }

    func testLoneOneStaysAWord() {
        check("one of them", "one of them")
        check("the ones", "the ones")
        check("1 of them", "one of them")
        check("chapter 11", "chapter 11")
    }

    func testOrdinalsAndPlurals() {
        check("the first and the twenty first", "the 1st and the 21st")
        check("third fifth eighth ninth twelfth", "3rd 5th 8th 9th 12th")
        check("the hundredth time", "the 100th time")
        check("the nineteen nineties", "the 1990s")
        check("the 21 st century", "the 21st century")
    }

    func testDecimals() {
        check("two point five", "2.5")
        check("three and a half", "3.5")
        check("half a million", "500000")
        check("it is 2.5 meters", "it is 2.5 meters")
        check("point of view", "point of view")
    }

    func testDigitRunsAndZeros() {
        check("double seven", "77")
        check("seven oh seven", "707")
        check("oh well", "oh well")
        check("zero", "0")
    }

    func testCurrencyAndPercent() {
        check("twenty dollars", "$20")
        check("It costs $20.", "it costs $20")
        check("five dollars and ten cents", "$5.10")
        check("ten percent", "10%")
        check("ten per cent", "10%")
        check("10%", "10%")
        check("fifty pounds", "£50")
        check("minus five degrees", "-5 degrees")
        check("dollars and cents", "dollars and cents")
        check("a $ sign", "a sign")
    }

    func testDigitSeparatorsAndBoundaries() {
        check("1,000,000 people", "1000000 people")
        check("covid19", "covid 19")
        check("5pm", "5 pm")
    }

    func testReferenceAndHypothesisAgree() {
        // Typical formatting differences between a transcript and a model's output.
        let pairs = [
            ("And so, my fellow Americans: ask not what your country can do for you.",
             "and so my fellow americans ask not what your country can do for you"),
            ("He paid twenty-one dollars for the colour TV.", "He paid $21 for the color TV"),
            ("It's 10 percent", "it is ten per cent"),
        ]
        for (a, b) in pairs {
            XCTAssertEqual(normalizer(a), normalizer(b), "\(a) vs \(b)")
        }
    }

    func testNumberNormalizerAlone() {
        let n = EnglishNumberNormalizer()
        XCTAssertEqual(n.normalize("twenty one guns"), "21 guns")
        XCTAssertEqual(n.normalize("no numbers here"), "no numbers here")
    }

    func testSpellingTableIsLowercaseAndDoesNotMapToItself() {
        for (british, american) in EnglishSpellings.table {
            XCTAssertEqual(british, british.lowercased())
            XCTAssertNotEqual(british, american)
        }
        XCTAssertEqual(EnglishSpellings.americanize("the honourable labourer"), "the honorable laborer")
        XCTAssertGreaterThan(EnglishSpellings.table.count, 500)
    }
}

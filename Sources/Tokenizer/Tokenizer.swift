// Module `Tokenizer`: see README "Architecture".

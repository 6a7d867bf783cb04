// Module `Evaluation`: see README "Architecture".

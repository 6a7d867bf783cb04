// Module `Serving`: see README "Architecture".

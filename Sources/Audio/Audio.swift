// Module `Audio`: see README "Architecture".

// Module `Capture`: see README "Architecture".

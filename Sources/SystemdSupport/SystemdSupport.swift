// Module `SystemdSupport`: see README "Architecture".

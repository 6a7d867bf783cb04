import Foundation

/// How much of a process's mappings is resident, from /proc/PID/smaps (this process's unless told): for tests of
/// memory handed back to the page cache.
public enum ResidentPages {
    /// Rss of the mapping that holds `address`, in KiB (nil when no mapping holds it).
    public static func kib(ofMappingAt address: UnsafeRawPointer) -> Int? {
        let wanted = UInt(bitPattern: address)
        var found: Int?
        forEachMapping { range, _, _, rssKiB in
            if range.contains(wanted) { found = rssKiB }
        }
        return found
    }

    /// Resident bytes of the mappings of files whose path ends with `suffix`, in this process or in `process`; with
    /// `readOnly`, of those not writable only (code and constants).
    public static func bytes(ofFilesEndingWith suffix: String, readOnly: Bool = false, process: Int32? = nil) -> Int {
        var total = 0
        forEachMapping(process: process) { _, permissions, header, rssKiB in
            if header.hasSuffix(suffix) && !(readOnly && permissions.contains("w")) { total += rssKiB * 1024 }
        }
        return total
    }

    /// Each mapping's address range, permissions, header line and Rss in KiB, of this process or of `process`.
    private static func forEachMapping(process: Int32? = nil, _ body: (Range<UInt>, Substring, Substring, Int) -> Void) {
        // Read to the end (a /proc file's size shows as 0).
        guard let handle = FileHandle(forReadingAtPath: "/proc/\(process.map(String.init) ?? "self")/smaps") else { return }
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var current: (range: Range<UInt>, permissions: Substring, header: Substring)?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 5, fields[0].contains("-"), !fields[0].hasSuffix(":") {   // a mapping's header
                let bounds = fields[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
                current = bounds.count == 2 ? (bounds[0] ..< bounds[1], fields[1], line) : nil
            } else if let mapping = current, fields.first == "Rss:", fields.count > 1 {
                body(mapping.range, mapping.permissions, mapping.header, Int(fields[1]) ?? 0)
                current = nil
            }
        }
    }
}

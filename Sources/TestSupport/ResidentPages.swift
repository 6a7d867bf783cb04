import Foundation

/// How much of a mapping is resident, from /proc/self/smaps: for tests of memory handed back to the page cache.
public enum ResidentPages {
    /// Rss of the mapping that holds `address`, in KiB (nil when no mapping holds it).
    public static func kib(ofMappingAt address: UnsafeRawPointer) -> Int? {
        let wanted = UInt(bitPattern: address)
        // Read to the end (a /proc file's size shows as 0).
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/smaps") else { return nil }
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= wanted && wanted < bounds[1]
            } else if inside, fields.first == "Rss:", fields.count > 1 {
                return Int(fields[1])
            }
        }
        return nil
    }
}

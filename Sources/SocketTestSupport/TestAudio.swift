/// A RIFF/WAVE file around integer PCM `data` (tests only); `dataSize` overrides the `data` chunk's declared
/// size (a header that lies about its length).
public func wavFile(data: [UInt8], rate: Int, channels: Int, bits: Int, dataSize: UInt32? = nil) -> [UInt8] {
    func u32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)] }
    func u16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    let blockAlign = channels * bits / 8
    var fmt = u16(1) + u16(channels) + u32(UInt32(rate)) + u32(UInt32(rate * blockAlign))
    fmt += u16(blockAlign) + u16(bits)
    var out = Array("RIFF".utf8) + u32(UInt32(4 + 8 + fmt.count + 8 + data.count)) + Array("WAVE".utf8)
    out += Array("fmt ".utf8) + u32(UInt32(fmt.count)) + fmt
    out += Array("data".utf8) + u32(dataSize ?? UInt32(data.count)) + data
    return out
}

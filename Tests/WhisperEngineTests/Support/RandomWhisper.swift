@_exported import WhisperTestSupport

// RandomWhisper comes from the WhisperTestSupport target; SeededGenerator from WhisperEngine.

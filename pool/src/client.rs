//! The data client behind `tidepool put` and `tidepool get`: stores files in a pool and reads
//! them back over the pool's authenticated data connection, verifying checksums end to end.

use std::path::{Path, PathBuf};

use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{Frame, MAX_DATA_CHUNK, WireError, decode};
use tidepool_p2p::message::{DataReply, DataRequest, PutRequest};
use tidepool_p2p::model::{Checksum, ChecksumWriter, FileAttributes};
use tidepool_p2p::{PnfsId, RemoteError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{}", .0.render())]
    Pool(RemoteError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Verify(String),
    #[error("unexpected reply from the pool: {0}")]
    Protocol(String),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File { path: path.to_path_buf(), source }
}

/// Stores one file; returns its new PnfsId and checksum.
pub async fn put_file(
    conn: &mut Connection,
    path: &Path,
    template: &PutRequest,
) -> Result<(PnfsId, Checksum), ClientError> {
    let mut file = tokio::fs::File::open(path).await.map_err(file_err(path))?;
    let size = file.metadata().await.map_err(file_err(path))?.len();
    let req = PutRequest { size, ..template.clone() };
    conn.send(&DataRequest::Put(req)).await?;
    let pnfsid = match conn.recv::<DataReply>().await? {
        DataReply::PutReady { pnfsid } => pnfsid,
        DataReply::Error(e) => return Err(ClientError::Pool(e)),
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    let mut sum = ChecksumWriter::new();
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want]).await.map_err(file_err(path))?;
        sum.update(&buf[..want]);
        if let Err(e) = conn.writer.send_data(&buf[..want]).await {
            return Err(pool_reason(conn, e).await);
        }
        left -= want as u64;
    }
    if let Err(e) = conn.send(&DataRequest::PutEnd { checksum: sum.finish() }).await {
        return Err(pool_reason(conn, e).await);
    }
    match conn.recv::<DataReply>().await? {
        DataReply::PutCommitted { pnfsid: id, checksum } if id == pnfsid => Ok((pnfsid, checksum)),
        DataReply::Error(e) => Err(ClientError::Pool(e)),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

/// After a failed send, the pool may have said why it stopped listening (a full pool, a
/// shutdown): prefer its words to "broken pipe".
async fn pool_reason(conn: &mut Connection, send_error: WireError) -> ClientError {
    match tokio::time::timeout(std::time::Duration::from_secs(1), conn.recv::<DataReply>()).await {
        Ok(Ok(DataReply::Error(e))) => ClientError::Pool(e),
        _ => ClientError::Wire(send_error),
    }
}

/// Reads one replica into `out`, verifying size and checksum; `out` appears only when both
/// match.
pub async fn get_file(conn: &mut Connection, pnfsid: PnfsId, out: &Path) -> Result<FileAttributes, ClientError> {
    conn.send(&DataRequest::Get { pnfsid }).await?;
    let attrs = match conn.recv::<DataReply>().await? {
        DataReply::GetReady { attributes } => attributes,
        DataReply::Error(e) => return Err(ClientError::Pool(e)),
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    let partial = out.with_file_name(format!(
        ".{}.part",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| pnfsid.to_string())
    ));
    let result = receive(conn, &attrs, &partial).await;
    match result {
        Ok(()) => {
            tokio::fs::rename(&partial, out).await.map_err(file_err(out))?;
            Ok(attrs)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

async fn receive(conn: &mut Connection, attrs: &FileAttributes, partial: &Path) -> Result<(), ClientError> {
    let mut file = tokio::fs::File::create(partial).await.map_err(file_err(partial))?;
    let mut sum = ChecksumWriter::new();
    let mut got = 0u64;
    loop {
        match conn.next_frame().await? {
            Frame::Data(chunk) => {
                got += chunk.len() as u64;
                if got > attrs.size {
                    return Err(ClientError::Verify(format!("pool sent more than the {} bytes announced", attrs.size)));
                }
                sum.update(&chunk);
                file.write_all(&chunk).await.map_err(file_err(partial))?;
            }
            Frame::Message(body) => match decode::<DataReply>(&body)? {
                DataReply::GetEnd => break,
                DataReply::Error(e) => return Err(ClientError::Pool(e)),
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            },
        }
    }
    if got != attrs.size {
        return Err(ClientError::Verify(format!("received {got} bytes of {}", attrs.size)));
    }
    if let Some(expected) = attrs.checksum
        && sum.finish() != expected
    {
        return Err(ClientError::Verify(format!(
            "checksum mismatch: received data has {}, the pool recorded {expected}",
            sum.finish()
        )));
    }
    file.sync_all().await.map_err(file_err(partial))?;
    Ok(())
}

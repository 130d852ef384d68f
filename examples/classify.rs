//! Classify an image file: `cargo run --release --example classify -- IMAGE [WEIGHTS.pth]`.
//! Without weights the engine uses synthetic ones, and the classes it prints are meaningless.
use std::path::Path;

use sret_tome::{imagenet_class, load_image, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let image = args.next().unwrap_or_else(|| "assets/sample.jpg".into());
    let weights = args.next();
    for (class, p) in classify(Path::new(&image), weights.as_deref().map(Path::new))? {
        println!(
            "{:5.1}%  {}",
            100.0 * p,
            imagenet_class(class).unwrap_or("?")
        );
    }
    Ok(())
}

/// The five most likely ImageNet classes of `image`, with ToMe merging 10 tokens per block.
pub fn classify(image: &Path, weights: Option<&Path>) -> sret_tome::Result<Vec<(usize, f32)>> {
    let mut builder = Engine::builder().schedule("constant:10".parse()?);
    match weights {
        Some(w) => builder = builder.weights(w),
        None => {
            eprintln!("no weights given: synthetic ones, so these classes are meaningless");
            builder = builder.synthetic_weights();
        }
    }
    let engine = builder.build()?;
    Ok(engine.run(&load_image(image)?)?.top_k(0, 5))
}
